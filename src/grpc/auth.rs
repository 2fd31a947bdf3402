//! Who is calling, and whether they may: every consent.v1 call passes here.
//!
//! [`Authenticator`] is the interceptor in front of every service but
//! health: it finds the caller by bearer token or mTLS certificate subject
//! and puts it in the request, or answers UNAUTHENTICATED. [`admit`] then
//! asks the pure `policy::authorize` whether the caller may call the method,
//! and [`Permit::allow`] whether it may touch what the parsed request names.
//! Without a callers file nobody is authenticated and everything is allowed:
//! `startup` permits that only on loopback addresses.
//!
//! It also holds each caller to its rate (`policy::rate`): keyed by the
//! caller's id, or by its address when the call is anonymous or names no
//! known caller (so guessing tokens is throttled too).

use std::{net::IpAddr, sync::Arc, time::Instant};

use tonic::{Request, Status, metadata::MetadataMap, service::Interceptor};

use crate::{
    domain::{Caller, CallerId, LegalBasis, PurposeCode, RecipientId},
    error::Error,
    policy::{
        Access, Callers, authorize,
        rate::{Buckets, Rate, address_key},
    },
};

mod subject;

pub use subject::cert_subject;

/// Authenticates each call against the callers file, if there is one.
#[derive(Clone)]
pub struct Authenticator {
    /// `None` when served without callers: every call is let through, and
    /// its actor is whatever `x-actor` says.
    callers: Option<Arc<Callers>>,
    /// Every caller's bucket, shared by all services and connections.
    rates: Arc<Buckets<RateKey>>,
}

/// Whom a call counts against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum RateKey {
    Caller(CallerId),
    /// `None` only for a transport without addresses.
    Address(Option<IpAddr>),
}

/// The authenticated caller of a call, in its request extensions.
#[derive(Clone)]
struct Authenticated(Arc<Caller>);

impl Authenticator {
    pub fn new(callers: Option<Arc<Callers>>, rate: Rate) -> Self {
        Self {
            callers,
            rates: Arc::new(Buckets::new(rate)),
        }
    }

    /// Takes one call from `key`'s bucket, or says when to come back.
    fn count(&self, key: RateKey) -> Result<(), Error> {
        (self.rates.take(key, Instant::now()))
            .map_err(|retry_after| Error::RateLimited { retry_after })
    }

    fn find(&self, callers: &Callers, request: &Request<()>) -> Result<Caller, Error> {
        if let Some(token) = bearer_token(request.metadata())? {
            return callers
                .by_token(token)
                .cloned()
                .ok_or(Error::Unauthenticated("the bearer token is not known"));
        }
        let certs = request.peer_certs();
        let leaf = certs.as_deref().and_then(|certs| certs.first());
        let Some(leaf) = leaf else {
            return Err(Error::Unauthenticated(
                "send `authorization: Bearer <token>`, or a client certificate",
            ));
        };
        cert_subject(leaf.as_ref())
            .and_then(|subject| callers.by_cert_subject(&subject))
            .cloned()
            .ok_or(Error::Unauthenticated(
                "the client certificate's subject is not a caller",
            ))
    }
}

impl Interceptor for Authenticator {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let address = RateKey::Address(request.remote_addr().map(|a| address_key(a.ip())));
        let Some(callers) = &self.callers else {
            self.count(address)?;
            return Ok(request);
        };
        let caller = match self.find(callers, &request) {
            Ok(caller) => caller,
            Err(unknown) => {
                self.count(address)?;
                return Err(unknown.into());
            }
        };
        self.count(RateKey::Caller(caller.id.clone()))?;
        request
            .extensions_mut()
            .insert(Authenticated(Arc::new(caller)));
        Ok(request)
    }
}

/// The token of an `authorization: Bearer <token>` header, if one was sent.
fn bearer_token(metadata: &MetadataMap) -> Result<Option<&str>, Error> {
    let Some(value) = metadata.get("authorization") else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer ").or(v.strip_prefix("bearer ")))
        .map(str::trim)
        .filter(|token| !token.is_empty());
    token.map(Some).ok_or(Error::Unauthenticated(
        "authorization must be `Bearer <token>`",
    ))
}

/// What one authenticated call may still be refused for, once its request
/// is parsed: the purposes, recipients and legal bases it names.
#[derive(Clone)]
pub struct Permit {
    caller: Option<Arc<Caller>>,
    // Kept apart and joined only to match a caller's entry: formatting the
    // name on every call cost a Check about 1,000 instructions.
    service: &'static str,
    method: &'static str,
}

/// Lets the call in if its caller may call `service/method` at all, and
/// leaves a [`Permit`] in the request for the checks that need the parsed
/// request.
pub fn admit<T>(
    request: &mut Request<T>,
    service: &'static str,
    method: &'static str,
) -> Result<(), Error> {
    let permit = Permit {
        caller: (request.extensions().get::<Authenticated>()).map(|a| a.0.clone()),
        service,
        method,
    };
    permit.allow(&[], &[], &[])?;
    request.extensions_mut().insert(permit);
    Ok(())
}

impl Permit {
    /// The permit [`admit`] left in the request. A request that never went
    /// through `admit` is refused rather than let through unchecked.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Error> {
        request
            .extensions()
            .get::<Permit>()
            .cloned()
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("a call was not admitted")))
    }

    /// The authenticated caller; `None` when served without callers.
    pub fn caller(&self) -> Option<&Caller> {
        self.caller.as_deref()
    }

    /// Whether the caller may touch all of these. Always yes without callers.
    pub fn allow(
        &self,
        purposes: &[PurposeCode],
        recipients: &[RecipientId],
        legal_bases: &[LegalBasis],
    ) -> Result<(), Error> {
        let Some(caller) = &self.caller else {
            return Ok(());
        };
        with_rpc_name(self.service, self.method, |rpc| {
            let access = Access {
                rpc,
                purposes,
                recipients,
                legal_bases,
            };
            authorize(caller, &access).map_err(|refusal| Error::Refused {
                refusal,
                rpc: rpc.to_owned(),
            })
        })
    }

    /// The purposes a WatchChanges stream may carry: those asked for, each
    /// of which the caller must hold, or all of the caller's own when none
    /// were asked for. `None` means every purpose (served without callers).
    pub fn watchable(&self, asked: Vec<PurposeCode>) -> Result<Vec<PurposeCode>, Error> {
        self.allow(&asked, &[], &[])?;
        match (&self.caller, asked.is_empty()) {
            (Some(caller), true) if caller.purposes.is_empty() => Err(Error::PermissionDenied(
                "this caller may watch no purpose".into(),
            )),
            (Some(caller), true) => Ok(caller.purposes.clone()),
            _ => Ok(asked),
        }
    }
}

/// `f` of `service/method`, joined on the stack for names of usual length.
fn with_rpc_name<R>(service: &str, method: &str, f: impl FnOnce(&str) -> R) -> R {
    let mut buffer = [0u8; 192];
    let length = service.len() + 1 + method.len();
    let Some(joined) = buffer.get_mut(..length) else {
        return f(&format!("{service}/{method}"));
    };
    let (head, tail) = joined.split_at_mut(service.len());
    head.copy_from_slice(service.as_bytes());
    tail[0] = b'/';
    tail[1..].copy_from_slice(method.as_bytes());
    f(std::str::from_utf8(joined).expect("two strs joined by '/' are UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::with_rpc_name;

    #[test]
    fn the_rpc_name_is_service_slash_method_however_long() {
        let short = with_rpc_name("consent.v1.ConsentService", "Check", str::to_owned);
        assert_eq!(short, "consent.v1.ConsentService/Check");
        let service = "s".repeat(300);
        let long = with_rpc_name(&service, "Check", str::to_owned);
        assert_eq!(long, format!("{service}/Check"));
        let exact = "x".repeat(192 - "/m".len());
        assert_eq!(with_rpc_name(&exact, "m", str::len), 192);
    }
}
