//! The unsubscribe page in a real headless Chromium, driven over WebDriver
//! (chromedriver): open the link from a letter, click the button, and the
//! next Check is a DENY.
//!
//! Needs Debian's `chromium` and `chromium-driver`. Without them the test
//! fails and says what to install: a green run always means the page was
//! tested. Building with CONSENTD_SKIP_BROWSER=1 marks the test ignored
//! instead, which the summary counts and names.

use std::{
    net::{SocketAddr, TcpListener},
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};

use consentd::grpc::pb::{Decision, Reason};
use serde_json::{Value, json};

use crate::{helpers::spawn_app, unsubscribe::links};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

pub struct Driver {
    child: Child,
    addr: SocketAddr,
    session: String,
    profile: std::path::PathBuf,
}

impl Driver {
    pub async fn start(accept_language: &str) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = std::env::temp_dir().join(format!(
            "consentd-chromium-{}",
            uuid::Uuid::new_v4().simple()
        ));
        let mut driver = Self {
            child,
            addr,
            session: String::new(),
            profile,
        };
        let created = driver
            .call(
                "POST",
                "/session",
                Some(json!({"capabilities": {"alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": CHROMIUM,
                        // The flags this machine's closed network needs.
                        "args": [
                            "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update",
                            "--disable-sync", "--disable-quic",
                            format!("--user-data-dir={}", driver.profile.display()),
                            format!("--lang={accept_language}"),
                        ],
                        "prefs": {
                            "intl.accept_languages": accept_language,
                            "download.default_directory": driver.downloads(),
                            "download.prompt_for_download": false,
                        },
                    }
                }}})),
            )
            .await;
        driver.session = created["sessionId"]
            .as_str()
            .expect("a WebDriver session")
            .to_string();
        // A click that submits a form returns before the next page is
        // there; finding elements then waits for it.
        driver
            .call(
                "POST",
                &driver.url("/timeouts"),
                Some(json!({"implicit": 10_000})),
            )
            .await;
        driver
    }

    /// One WebDriver command over a plain HTTP/1.1 connection.
    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        // chromedriver keeps connections open whatever we ask, so read
        // exactly Content-Length bytes instead of reading to the end.
        let mut reader = tokio::io::BufReader::new(stream);
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse().unwrap();
            }
        }
        let mut body = vec![0u8; length];
        reader.read_exact(&mut body).await.unwrap();
        let value: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
        assert!(
            value["value"]["error"].is_null(),
            "{method} {path}: {value}"
        );
        value["value"].clone()
    }

    /// Where the browser saves downloads: inside its own profile, so they
    /// go when it does.
    pub fn downloads(&self) -> std::path::PathBuf {
        self.profile.join("downloads")
    }

    pub fn url(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub async fn open(&self, url: &str) {
        self.call("POST", &self.url("/url"), Some(json!({"url": url})))
            .await;
    }

    pub async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                "POST",
                &self.url("/element"),
                Some(json!({"using": "css selector", "value": css})),
            )
            .await;
        found
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .expect("an element reference")
            .to_string()
    }

    pub async fn text(&self, css: &str) -> String {
        let element = self.element(css).await;
        self.call("GET", &self.url(&format!("/element/{element}/text")), None)
            .await
            .as_str()
            .unwrap()
            .to_string()
    }

    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call(
            "POST",
            &self.url(&format!("/element/{element}/click")),
            Some(json!({})),
        )
        .await;
    }

    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine as _;
        let png = self.call("GET", &self.url("/screenshot"), None).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Fails, naming the packages, when the browser is not installed.
pub fn require_browser() {
    assert!(
        Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists(),
        "the browser test needs {CHROMIUM} and {CHROMEDRIVER}: \
         apt-get install chromium chromium-driver \
         (or build the tests with CONSENTD_SKIP_BROWSER=1 to skip it, visibly)"
    );
}

#[tokio::test]
#[cfg_attr(
    skip_browser,
    ignore = "CONSENTD_SKIP_BROWSER=1: the unsubscribe page was NOT tested in a browser"
)]
async fn a_person_unsubscribes_in_a_real_browser_and_the_next_check_denies() {
    require_browser();
    let app = spawn_app().await;
    app.register("C-1042").await;
    let link = links(&app, &["C-1042"], "").await.links.remove(0);
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"));

    for (language, lead, done) in [
        ("en-US", "You are about to stop:", "We recorded your choice"),
        ("zh-CN", "您将停止接收：", "我们已记录您的选择"),
    ] {
        let driver = Driver::start(language).await;
        let before = app.count("consent_records").await;
        driver.open(&link.url).await;
        assert!(driver.text("main").await.contains(lead), "{language}");
        assert_eq!(
            app.count("consent_records").await,
            before,
            "opening the page changes nothing"
        );
        driver
            .screenshot(&shots.join(format!("unsubscribe-{language}.png")))
            .await;

        driver.click("#unsubscribe").await;
        assert!(driver.text("#done").await.contains(done), "{language}");
        driver
            .screenshot(&shots.join(format!("unsubscribed-{language}.png")))
            .await;
        driver.call("DELETE", &driver.url(""), None).await;
    }

    let answer = app.check("C-1042", "promotional_mail", "email").await;
    assert_eq!(
        (answer.decision(), answer.reason()),
        (Decision::Deny, Reason::OptedOut)
    );
    assert_eq!(
        app.count("consent_records").await,
        1,
        "the second click added nothing"
    );
}
