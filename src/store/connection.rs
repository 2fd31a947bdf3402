//! How every connection to PostgreSQL is set up: the bounds that make a
//! database outage fail calls fast instead of holding them. One place, so
//! they apply to the pool, the change-feed LISTEN and the health probe
//! alike, whatever URL and role they connect with.

use std::time::Duration;

use deadpool_postgres::Timeouts;
use tokio_postgres::Config;

/// TCP keepalive on every connection, unless the URL sets its own: a
/// connection whose peer vanished (a failed-over host, a dropped NAT entry)
/// is found dead after about idle + interval x retries = 60 s, not after
/// the kernel's two hours.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEPALIVE_RETRIES: u32 = 3;

/// The bounds on connections to the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionSettings {
    /// Most pooled connections.
    pub max_connections: usize,
    /// How long opening one connection (TCP, TLS and startup) may take,
    /// unless the URL sets `connect_timeout`.
    pub connect_timeout: Duration,
    /// How long a call waits for a free pooled connection before it is
    /// answered UNAVAILABLE: past this the database is saturated or gone,
    /// and a retry later or elsewhere does better than a longer queue.
    pub pool_wait: Duration,
    /// The server cancels any statement that runs longer (PostgreSQL's
    /// `statement_timeout`, set in the startup packet, so it costs no round
    /// trip). `None` for the one-shot commands (verify, rotate, import),
    /// whose statements take as long as the data needs.
    pub statement_timeout: Option<Duration>,
}

impl ConnectionSettings {
    pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_POOL_WAIT: Duration = Duration::from_secs(5);

    /// The default bounds, without a statement timeout.
    pub fn new(max_connections: usize) -> Self {
        Self {
            max_connections,
            connect_timeout: Self::DEFAULT_CONNECT_TIMEOUT,
            pool_wait: Self::DEFAULT_POOL_WAIT,
            statement_timeout: None,
        }
    }

    /// Applies these settings to a URL's configuration. What the URL says
    /// explicitly (`connect_timeout`, `keepalives_idle`, a
    /// `statement_timeout` in `options`) wins: the operator wrote it for
    /// this one database.
    pub(super) fn apply(&self, config: &mut Config) {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(self.connect_timeout);
        }
        if config.get_keepalives() {
            if config.get_keepalives_idle() == Config::new().get_keepalives_idle() {
                config.keepalives_idle(KEEPALIVE_IDLE);
            }
            if config.get_keepalives_interval().is_none() {
                config.keepalives_interval(KEEPALIVE_INTERVAL);
            }
            if config.get_keepalives_retries().is_none() {
                config.keepalives_retries(KEEPALIVE_RETRIES);
            }
        }
        if let Some(timeout) = self.statement_timeout {
            let options = config.get_options().unwrap_or_default();
            if !options.contains("statement_timeout") {
                let setting = format!("-c statement_timeout={}", timeout.as_millis());
                let options = if options.trim().is_empty() {
                    setting
                } else {
                    format!("{options} {setting}")
                };
                config.options(options);
            }
        }
    }

    /// The pool's bounds: a connection is opened (and checked before reuse)
    /// within the connect timeout, and a call waits at most `pool_wait`.
    pub(super) fn timeouts(&self) -> Timeouts {
        Timeouts {
            wait: Some(self.pool_wait),
            create: Some(self.connect_timeout),
            recycle: Some(self.connect_timeout),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use super::*;

    fn applied(url: &str, settings: &ConnectionSettings) -> Config {
        let mut config = Config::from_str(url).unwrap();
        settings.apply(&mut config);
        config
    }

    #[test]
    fn every_bound_is_set_on_a_plain_url() {
        let settings = ConnectionSettings {
            statement_timeout: Some(Duration::from_millis(1500)),
            ..ConnectionSettings::new(4)
        };
        let config = applied("postgres://u@h/db", &settings);
        assert_eq!(
            config.get_connect_timeout(),
            Some(&ConnectionSettings::DEFAULT_CONNECT_TIMEOUT)
        );
        assert!(config.get_keepalives());
        assert_eq!(config.get_keepalives_idle(), KEEPALIVE_IDLE);
        assert_eq!(config.get_keepalives_interval(), Some(KEEPALIVE_INTERVAL));
        assert_eq!(config.get_keepalives_retries(), Some(KEEPALIVE_RETRIES));
        assert_eq!(config.get_options(), Some("-c statement_timeout=1500"));
    }

    #[test]
    fn what_the_url_says_wins() {
        let settings = ConnectionSettings {
            statement_timeout: Some(Duration::from_secs(5)),
            ..ConnectionSettings::new(4)
        };
        let config = applied(
            "postgres://u@h/db?connect_timeout=9&keepalives_idle=77\
             &options=-c%20statement_timeout%3D60000",
            &settings,
        );
        assert_eq!(config.get_connect_timeout(), Some(&Duration::from_secs(9)));
        assert_eq!(config.get_keepalives_idle(), Duration::from_secs(77));
        assert_eq!(config.get_options(), Some("-c statement_timeout=60000"));

        let config = applied("postgres://u@h/db?options=-c%20search_path%3Dx", &settings);
        assert_eq!(
            config.get_options(),
            Some("-c search_path=x -c statement_timeout=5000"),
            "other options are kept"
        );
    }

    #[test]
    fn no_statement_timeout_unless_one_is_asked_for() {
        let config = applied("postgres://u@h/db", &ConnectionSettings::new(4));
        assert_eq!(config.get_options(), None);
    }
}
