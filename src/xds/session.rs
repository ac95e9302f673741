//! The state of the world subscription to `RateLimitConfig`, one ADS stream at a time: what to
//! request, and what to answer to each response.
//!
//! Bookkeeping, as Envoy's own xDS clients keep it: the first request of a stream carries the node
//! and the version last applied (so a management server that comes back with the same version need
//! not resend anything new); every response gets exactly one request back, carrying its `nonce`.
//! An ACK carries the response's `version_info`; a NACK carries the version still in force and the
//! reason in `error_detail`, and the rules in force stay. Each response is the whole set: a domain
//! missing from it is removed. A response equal to the set in force is ACKed without publishing a
//! new generation, so a resent resource changes nothing (counter keys derive from the rules, so an
//! unchanged rule keeps its counters across any publish anyway).

use std::collections::BTreeMap;
use std::sync::Arc;

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::protobuf::{Struct, Value, value::Kind};
use envoy_types::pb::google::rpc::Status;
use envoy_types::pb::ratelimit::config::ratelimit::v3::RateLimitConfig;
use prost::Name;
use tokio::sync::mpsc;
use tonic::codegen::tokio_stream::{Stream, StreamExt};

use super::convert::{self, ConvertError};
use crate::rules::LiveRules;

/// gRPC's `INVALID_ARGUMENT`, the code of a NACK's `error_detail`.
const INVALID_ARGUMENT: i32 = 3;

/// What became of one response.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Published as this generation.
    Applied(u64),
    /// The same rules as in force: ACKed, nothing published.
    Unchanged,
    /// NACKed with this reason; the rules in force stay.
    Refused(String),
}

/// How a stream ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamEnd {
    /// Responses received on the stream; a stream that delivered any proves the server works, so
    /// the reconnection backoff starts over.
    pub responses: u64,
}

/// The subscription's state across streams.
#[derive(Debug)]
pub struct Subscription {
    node: Node,
    /// `version_info` of the last applied response; empty before the first.
    version: String,
    /// The resources in force, to tell a resend from a change.
    applied: Option<Vec<RateLimitConfig>>,
    rules: Arc<LiveRules>,
}

impl Subscription {
    pub fn new(node_id: &str, metadata: &BTreeMap<String, String>, rules: Arc<LiveRules>) -> Self {
        let fields = metadata
            .iter()
            .map(|(k, v)| {
                let value = Value {
                    kind: Some(Kind::StringValue(v.clone())),
                };
                (k.clone(), value)
            })
            .collect();
        let node = Node {
            id: node_id.to_owned(),
            metadata: Some(Struct { fields }),
            user_agent_name: "tollgate".into(),
            ..Node::default()
        };
        Self {
            node,
            version: String::new(),
            applied: None,
            rules,
        }
    }

    /// The `version_info` of the rules in force (empty before the first).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The request that opens a stream: the node, a wildcard subscription, the version in force.
    pub fn first_request(&self) -> DiscoveryRequest {
        DiscoveryRequest {
            node: Some(self.node.clone()),
            version_info: self.version.clone(),
            type_url: RateLimitConfig::type_url(),
            ..DiscoveryRequest::default()
        }
    }

    /// Applies or refuses one response, and returns the ACK or NACK to send back.
    pub fn on_response(&mut self, response: &DiscoveryResponse) -> (DiscoveryRequest, Outcome) {
        let outcome = match self.apply(response) {
            Ok(outcome) => {
                self.version = response.version_info.clone();
                tracing::debug!(version = %self.version, nonce = %response.nonce, "xDS ACK");
                outcome
            }
            Err(error) => {
                let reason = error.to_string();
                self.rules.count_refused();
                tracing::error!(
                    version = %response.version_info,
                    kept_version = %self.version,
                    error = %reason,
                    "xDS rules refused (NACK)"
                );
                Outcome::Refused(reason)
            }
        };
        let error_detail = match &outcome {
            Outcome::Refused(message) => Some(Status {
                code: INVALID_ARGUMENT,
                message: message.clone(),
                details: Vec::new(),
            }),
            Outcome::Applied(_) | Outcome::Unchanged => None,
        };
        let request = DiscoveryRequest {
            node: Some(self.node.clone()),
            version_info: self.version.clone(),
            type_url: RateLimitConfig::type_url(),
            response_nonce: response.nonce.clone(),
            error_detail,
            ..DiscoveryRequest::default()
        };
        (request, outcome)
    }

    fn apply(&mut self, response: &DiscoveryResponse) -> Result<Outcome, ConvertError> {
        if response.type_url != RateLimitConfig::type_url() {
            return Err(ConvertError::WrongResponseType(response.type_url.clone()));
        }
        let configs = convert::decode(&response.resources)?;
        if self.applied.as_ref() == Some(&configs) {
            return Ok(Outcome::Unchanged);
        }
        let snapshot = convert::to_snapshot(&configs, self.rules.load_options())?;
        let source = format!("xDS version {}", response.version_info);
        let generation = self.rules.publish(snapshot, &source);
        self.applied = Some(configs);
        Ok(Outcome::Applied(generation))
    }

    /// Answers every response of one stream until it ends or fails, sending each ACK or NACK on
    /// `requests`. The first request must already be sent.
    pub async fn serve<S, E>(
        &mut self,
        mut responses: S,
        requests: &mpsc::Sender<DiscoveryRequest>,
    ) -> StreamEnd
    where
        S: Stream<Item = Result<DiscoveryResponse, E>> + Unpin,
        E: std::fmt::Display,
    {
        let mut end = StreamEnd { responses: 0 };
        while let Some(next) = responses.next().await {
            let response = match next {
                Ok(response) => response,
                Err(error) => {
                    tracing::warn!(%error, "xDS stream failed");
                    return end;
                }
            };
            end.responses += 1;
            let (request, _) = self.on_response(&response);
            if requests.send(request).await.is_err() {
                return end;
            }
        }
        tracing::warn!("xDS stream closed by the management server");
        end
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::google::protobuf::Any;
    use envoy_types::pb::ratelimit::config::ratelimit::v3::{
        RateLimitDescriptor, RateLimitPolicy, RateLimitUnit,
    };
    use prost::Message;
    use tonic::codegen::tokio_stream::wrappers::ReceiverStream;

    use super::*;
    use crate::config::Snapshot;

    fn resource(domain: &str, limit: u32) -> Any {
        let config = RateLimitConfig {
            name: domain.into(),
            domain: domain.into(),
            descriptors: vec![RateLimitDescriptor {
                key: "k".into(),
                rate_limit: Some(RateLimitPolicy {
                    unit: RateLimitUnit::Minute as i32,
                    requests_per_unit: limit,
                    ..Default::default()
                }),
                ..Default::default()
            }],
        };
        Any {
            type_url: RateLimitConfig::type_url(),
            value: config.encode_to_vec(),
        }
    }

    fn response(version: &str, nonce: &str, resources: Vec<Any>) -> DiscoveryResponse {
        DiscoveryResponse {
            version_info: version.into(),
            nonce: nonce.into(),
            type_url: RateLimitConfig::type_url(),
            resources,
            ..Default::default()
        }
    }

    fn limit(rules: &LiveRules, domain: &str) -> Option<u64> {
        let generation = rules.current();
        let matched = generation.snapshot.find(domain, &[("k", "v")])?;
        matched.rule.quota.as_ref().map(|q| q.limit())
    }

    fn subscription() -> (Subscription, Arc<LiveRules>) {
        let rules = LiveRules::from_snapshot(Snapshot::empty());
        let metadata = BTreeMap::from([("cluster".to_string(), "eu".to_string())]);
        (
            Subscription::new("node-1", &metadata, Arc::clone(&rules)),
            rules,
        )
    }

    #[test]
    fn first_request_names_the_node_its_metadata_and_the_type() {
        let (sub, _) = subscription();
        let first = sub.first_request();
        let node = first.node.unwrap();
        assert_eq!(node.id, "node-1");
        let fields = node.metadata.unwrap().fields;
        assert_eq!(fields["cluster"].kind, Some(Kind::StringValue("eu".into())));
        assert_eq!(
            first.type_url,
            "type.googleapis.com/ratelimit.config.ratelimit.v3.RateLimitConfig"
        );
        assert!(first.version_info.is_empty() && first.response_nonce.is_empty());
        assert!(first.resource_names.is_empty(), "a wildcard subscription");
    }

    #[test]
    fn ack_applies_nack_keeps_the_last_good_rules() {
        let (mut sub, rules) = subscription();
        let (ack, outcome) = sub.on_response(&response("v1", "n1", vec![resource("a", 5)]));
        assert_eq!(outcome, Outcome::Applied(2));
        assert_eq!(
            (ack.version_info.as_str(), ack.response_nonce.as_str()),
            ("v1", "n1")
        );
        assert!(ack.error_detail.is_none());
        assert_eq!(limit(&rules, "a"), Some(5));

        let mut bad = resource("a", 9);
        bad.value = vec![0xff, 0xff, 0xff];
        let (nack, outcome) = sub.on_response(&response("v2", "n2", vec![bad]));
        assert!(matches!(outcome, Outcome::Refused(_)));
        assert_eq!(
            (nack.version_info.as_str(), nack.response_nonce.as_str()),
            ("v1", "n2")
        );
        let detail = nack.error_detail.unwrap();
        assert_eq!(detail.code, INVALID_ARGUMENT);
        assert!(
            detail.message.contains("not a RateLimitConfig"),
            "{}",
            detail.message
        );
        assert_eq!(limit(&rules, "a"), Some(5));
        assert_eq!(rules.current().number, 2);

        let (ack, outcome) = sub.on_response(&response("v3", "n3", vec![resource("a", 7)]));
        assert_eq!(outcome, Outcome::Applied(3));
        assert_eq!(ack.version_info, "v3");
        assert_eq!(limit(&rules, "a"), Some(7));
        assert_eq!(sub.first_request().version_info, "v3", "resumes from v3");
    }

    #[test]
    fn invalid_rules_and_foreign_types_are_nacked() {
        let (mut sub, rules) = subscription();
        sub.on_response(&response("v1", "n1", vec![resource("a", 5)]));
        let duplicate = vec![resource("a", 1), resource("a", 2)];
        let (nack, _) = sub.on_response(&response("v2", "n2", duplicate));
        let message = nack.error_detail.unwrap().message;
        assert!(message.contains("duplicate domain `a`"), "{message}");

        let mut foreign = response("v3", "n3", vec![]);
        foreign.type_url = "type.googleapis.com/envoy.config.cluster.v3.Cluster".into();
        let (nack, _) = sub.on_response(&foreign);
        assert!(nack.error_detail.unwrap().message.contains("Cluster"));
        assert_eq!(nack.version_info, "v1");
        assert_eq!(limit(&rules, "a"), Some(5));
    }

    #[test]
    fn a_resend_is_acked_without_a_new_generation_and_removal_empties() {
        let (mut sub, rules) = subscription();
        let both = vec![resource("a", 5), resource("b", 6)];
        sub.on_response(&response("v1", "n1", both.clone()));
        let (ack, outcome) = sub.on_response(&response("v2", "n2", both));
        assert_eq!(outcome, Outcome::Unchanged);
        assert_eq!(ack.version_info, "v2");
        assert_eq!(rules.current().number, 2);

        let (_, outcome) = sub.on_response(&response("v3", "n3", vec![resource("b", 6)]));
        assert_eq!(outcome, Outcome::Applied(3));
        assert_eq!((limit(&rules, "a"), limit(&rules, "b")), (None, Some(6)));
        sub.on_response(&response("v4", "n4", vec![]));
        assert!(rules.current().snapshot.is_empty());
    }

    #[tokio::test]
    async fn serve_answers_each_response_of_an_injected_stream() {
        let (mut sub, rules) = subscription();
        let (responses_tx, responses_rx) = mpsc::channel::<Result<DiscoveryResponse, String>>(4);
        let (requests_tx, mut requests_rx) = mpsc::channel(4);
        responses_tx
            .send(Ok(response("v1", "n1", vec![resource("a", 5)])))
            .await
            .unwrap();
        responses_tx
            .send(Ok(response("v2", "n2", vec![Any::default()])))
            .await
            .unwrap();
        responses_tx
            .send(Err("connection reset".into()))
            .await
            .unwrap();
        let end = sub
            .serve(ReceiverStream::new(responses_rx), &requests_tx)
            .await;
        assert_eq!(end, StreamEnd { responses: 2 });
        let ack = requests_rx.recv().await.unwrap();
        assert_eq!(
            (ack.response_nonce.as_str(), ack.error_detail),
            ("n1", None)
        );
        let nack = requests_rx.recv().await.unwrap();
        assert_eq!(nack.response_nonce, "n2");
        assert_eq!(nack.version_info, "v1");
        assert!(nack.error_detail.is_some());
        assert_eq!(limit(&rules, "a"), Some(5));
        assert_eq!(sub.version(), "v1");
    }
}
