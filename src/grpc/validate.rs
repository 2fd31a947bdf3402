//! Request validation without a server: for each consent.v1 method, what
//! its handler does with the bytes before any IO — decode them with the
//! service codec's rules, then turn the message into domain values with the
//! very parser the handler calls. The fuzz tests drive every method through
//! here; a method missing from [`validate`] fails them.

use prost::Message;
use tonic::{Request, metadata::MetadataMap};

use super::{bulk, codec::decode_request, concern, consent, disclosure, pb, rights};
use crate::{error::Error, policy::Policy};

/// Validates an encoded request to `method` (`consent.v1.ConsentService/Check`)
/// sent with `metadata`: `Ok` when its handler would go on to the service,
/// else the error it answers with. `None` for a method not served here.
/// Who may call what (the callers file) is not part of it: that is
/// `policy::authorize`, tested on its own.
pub fn validate(
    policy: &Policy,
    method: &str,
    metadata: MetadataMap,
    message: &[u8],
) -> Option<Result<(), Error>> {
    let m = (metadata, message);
    let (service, name) = method.split_once('/')?;
    let result = match (service, name) {
        ("consent.v1.ConsentService", name) => match name {
            "RegisterSubject" => run(m, consent::parse_registration),
            "RecordConsent" => run(m, |r| consent::parse_record(policy, r)),
            "Check" => run(m, |r| consent::parse_check(policy, r.into_inner())),
            "BatchCheck" => run(m, |r| consent::parse_batch(policy, r.into_inner())),
            // One message of the stream; each is validated on its own.
            "BulkCheck" => run(m, |r| bulk::parse_bulk(policy, r.into_inner())),
            "GetConsentState" => run(m, |r: Request<pb::GetConsentStateRequest>| {
                consent::parse_subject(r.into_inner().subject_id)
            }),
            "ListConsentHistory" => run(m, |r| consent::parse_history(r.into_inner())),
            "WatchChanges" => run(m, |r| consent::parse_watch(policy, r.into_inner())),
            "CreateUnsubscribeLinks" => run(m, |r| consent::parse_links(policy, r.into_inner())),
            "CreatePreferenceLinks" => run(m, |r| consent::parse_preference_links(r.into_inner())),
            _ => return None,
        },
        ("consent.v1.DisclosureService", name) => match name {
            "PutPersonalData" => run(m, |r| disclosure::parse_put(policy, r)),
            "VerifyPersonalData" => run(m, |r| disclosure::parse_verify(policy, r.into_inner())),
            "ListRecipients" => run(m, |_: Request<pb::ListRecipientsRequest>| Ok(())),
            "RequestDisclosure" => run(m, |r| disclosure::parse_request(r, policy)),
            "ApproveDisclosure" => run(m, |r: Request<pb::ApproveDisclosureRequest>| {
                disclosure::actor_and_disclosure(&r, &r.get_ref().disclosure_id)
            }),
            "ReviewDisclosure" => run(m, |r: Request<pb::ReviewDisclosureRequest>| {
                disclosure::actor_and_disclosure(&r, &r.get_ref().disclosure_id)
            }),
            "ListDisclosures" => run(m, |r| disclosure::parse_list(r.into_inner())),
            "GetDisclosure" => run(m, |r| disclosure::parse_get(r.get_ref())),
            _ => return None,
        },
        ("consent.v1.ConcernService", name) => match name {
            "FileConcern" => run(m, concern::parse_file),
            "AcknowledgeConcern" => run(m, concern::parse_acknowledge),
            "ResolveConcern" => run(m, concern::parse_resolve),
            "GetConcern" => run(m, |r| concern::parse_get(r.into_inner())),
            "ListConcerns" => run(m, |r| concern::parse_list(r.into_inner())),
            _ => return None,
        },
        ("consent.v1.SubjectRightsService", name) => match name {
            "ExportSubject" => run(m, |r: Request<pb::ExportSubjectRequest>| {
                consent::parse_subject(r.into_inner().subject_id)
            }),
            "EraseSubject" => run(m, rights::parse_erase),
            _ => return None,
        },
        _ => return None,
    };
    Some(result)
}

/// Decodes `M` as the codec does and hands it, with its metadata, to the
/// handler's parser.
fn run<M: Message + prost::Name + Default, T>(
    (metadata, message): (MetadataMap, &[u8]),
    parse: impl FnOnce(Request<M>) -> Result<T, Error>,
) -> Result<(), Error> {
    let mut request = Request::new(decode_request::<M>(message)?);
    *request.metadata_mut() = metadata;
    parse(request).map(drop)
}
