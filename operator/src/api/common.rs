//! Types shared by the four kinds: references, signed images, network
//! endpoints, durations and the pieces of status every kind carries.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{
    KubeSchema,
    core::{Message, Rule},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of every Cellule kind.
pub const GROUP: &str = "cellule.ai";

/// A non-negative duration written as Kubernetes writes them (`90s`, `5m`,
/// `1h30m`, `720h`). Parsing follows Go's `time.ParseDuration` (through
/// kube's `Duration`); it is written back in the largest whole unit, so a
/// default shows as `720h`, not `2592000s`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Self(std::time::Duration::from_secs(secs))
    }
}

impl std::str::FromStr for Duration {
    type Err = String;

    /// Go's `time.ParseDuration` grammar without a sign (`1h30m`, `1.5s`,
    /// `0`), in checked integer arithmetic: a value too large is an error,
    /// never a panic (kube's parser multiplies floats unchecked, and this
    /// runs inside the watch on whatever a stored object holds).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |why: &str| format!("invalid duration {s:?}: {why}");
        if s == "0" {
            return Ok(Self(std::time::Duration::ZERO));
        }
        if s.is_empty() {
            return Err(invalid("empty"));
        }
        let mut nanos: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .ok_or_else(|| invalid("a number without a unit"))?;
            let (number, tail) = rest.split_at(digits);
            let unit_len = tail
                .find(|c: char| c.is_ascii_digit() || c == '.')
                .unwrap_or(tail.len());
            let (unit, next) = tail.split_at(unit_len);
            let per_unit: u128 = match unit {
                "ns" => 1,
                "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60_000_000_000,
                "h" => 3_600_000_000_000,
                _ => return Err(invalid("units are ns, us, ms, s, m and h")),
            };
            let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
            if whole.is_empty() && fraction.is_empty() || fraction.contains('.') {
                return Err(invalid("a malformed number"));
            }
            let too_big = || invalid("too large");
            let whole: u128 = if whole.is_empty() {
                0
            } else {
                whole.parse().map_err(|_| too_big())?
            };
            let mut part = whole.checked_mul(per_unit).ok_or_else(too_big)?;
            // Fractions below a nanosecond are dropped, as Go does.
            let mut scale = per_unit;
            for digit in fraction.bytes().take(30) {
                scale /= 10;
                part = part
                    .checked_add(u128::from(digit - b'0') * scale)
                    .ok_or_else(too_big)?;
            }
            nanos = nanos.checked_add(part).ok_or_else(too_big)?;
            rest = next;
        }
        let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| invalid("too large"))?;
        Ok(Self(std::time::Duration::new(
            secs,
            (nanos % 1_000_000_000) as u32,
        )))
    }
}

impl std::fmt::Display for Duration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let d = self.0;
        if d.subsec_nanos() != 0 {
            return write!(f, "{}ms", d.as_millis());
        }
        // Under two minutes stays in seconds: `60s` reads as the window it is.
        match d.as_secs() {
            s if s < 120 => write!(f, "{s}s"),
            s if s % 3600 == 0 => write!(f, "{}h", s / 3600),
            s if s % 60 == 0 => write!(f, "{}m", s / 60),
            s => write!(f, "{s}s"),
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "maxLength": 32 })
    }
}

/// RE2 pattern of an OCI image reference: optional registry host (and port),
/// repository path, optional tag, optional `@sha256:` digest.
pub const IMAGE_REFERENCE_PATTERN: &str = "^([a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?([.][a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?)*(:[0-9]{1,5})?/)?[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+(([.]|_|__|-+)[a-z0-9]+)*)*(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$";

/// CEL rule for a Go-style duration string (`90s`, `1h30m`) with bounds:
/// the pattern check runs first so a malformed string gets the message, not
/// a CEL evaluation error.
pub(crate) fn duration_rule(min: &str, max: &str, what: &str) -> Rule {
    Rule::new(format!(
        "self.matches('^([0-9]+(ms|s|m|h))+$') && duration(self) >= duration('{min}') && duration(self) <= duration('{max}')"
    ))
    .message(Message::Message(format!(
        "{what} must be a duration between {min} and {max}, written like 90s, 10m or 720h"
    )))
}

/// CEL condition on a string `c`: a well-formed CIDR, not a default route,
/// without host bits (a NetworkPolicy refuses `10.50.0.1/16`).
pub(crate) fn cidr_check(c: &str) -> String {
    format!("isCIDR({c}) && cidr({c}).prefixLength() > 0 && cidr({c}) == cidr({c}).masked()")
}

/// CEL rule: a CIDR that is well formed, not a default route, no host bits.
pub(crate) fn cidr_rule(what: &str) -> Rule {
    Rule::new(cidr_check("self")).message(Message::Message(format!(
        "{what} must be a CIDR like 10.20.0.0/16 (not 0.0.0.0/0 or ::/0, and no host bits such as 10.20.0.1/16)"
    )))
}

/// CEL rule on a `ResourceRequirements`: every limit and request is a
/// Kubernetes quantity (`500m`, `2Gi`; not `32GB`).
pub(crate) fn resources_rule(what: &str) -> Rule {
    // The maps are unbounded in the upstream schema, so iterating them would
    // exceed the CEL cost budget: the usual keys are checked (anything else
    // the API server refuses later becomes an ApplyFailed condition).
    let check = |map: &str| {
        format!(
            "(!has(self.{map}) || ['cpu', 'memory'].all(k, !(k in self.{map}) || isQuantity(string(self.{map}[k]))))"
        )
    };
    Rule::new(format!("{} && {}", check("limits"), check("requests")))
    .message(Message::Message(format!(
        "{what}: cpu and memory limits and requests must be quantities like 500m, 2 or 4Gi (not 4GB)"
    )))
}

/// CEL rule on the root of a kind whose name derives the names of the
/// objects the operator makes: a DNS label (Service names and label values
/// need one) short enough for the longest derived name, without `--`, which
/// the derived names use as the one separator a name cannot contain.
pub(crate) fn derived_name_rule(kind: &str, max: usize) -> Rule {
    Rule::new(format!(
        "size(self.metadata.name) <= {max} && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && !self.metadata.name.contains('--')"
    ))
    .message(Message::Message(format!(
        "metadata.name: a {kind} name must be at most {max} characters of lowercase letters, digits and '-' (no '.', no '--'), since the names of the objects made for it derive from it"
    )))
}

/// A reference to an object of the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LocalObjectRef {
    /// Name of the object, in the same namespace as the referring resource.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// A key inside a Secret or ConfigMap of the same namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct KeyRef {
    /// Name of the Secret or ConfigMap, in the same namespace.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside it.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// A container image that must be signed before it runs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SignedImage {
    /// Image reference, by tag (`registry.intra/cellule/pool:1.4.2`) or by
    /// digest (`…@sha256:<64 hex>`). The operator resolves it to a digest,
    /// checks that the digest carries a valid cosign signature by one of
    /// `verification.keys`, and runs that digest, never the tag.
    #[schemars(length(min = 1, max = 512))]
    #[x_kube(validation = Rule::new(format!("self.matches('{IMAGE_REFERENCE_PATTERN}')")).message("image reference must look like registry.example.com/team/name:tag or registry.example.com/team/name@sha256:<64 hex digits>, in lower case"))]
    #[x_kube(validation = Rule::new("self.matches('^(localhost|[^/]*[.:][^/]*)/')").message("image reference must name its registry host (registry.example.com/team/name:tag): an implied Docker Hub is never called"))]
    pub reference: String,
    /// How the image's signature is verified.
    pub verification: ImageVerification,
    /// Secrets of type kubernetes.io/dockerconfigjson used to pull the image
    /// and to read its signature.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    pub pull_secrets: Vec<LocalObjectRef>,
    /// How often the image is checked again: a tag moved to another digest
    /// is verified before it runs (and refused, keeping the running digest,
    /// if its signature does not hold), and a change of the listed keys'
    /// content shows in status.
    #[serde(default = "default_refresh_interval")]
    #[x_kube(validation = duration_rule("10s", "24h", "refreshInterval"))]
    pub refresh_interval: Duration,
}

fn default_refresh_interval() -> Duration {
    Duration::from_secs(300)
}

/// An image that runs: what the spec named, the verified digest pinned in
/// the pod spec, and which key verified it, when.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageStatus {
    /// Which image of the object (`pool`, `cpuWorkers[light-workers]`, `npuServer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The reference as written in the spec.
    pub reference: String,
    /// The verified digest the pods run (`sha256:…`).
    pub digest: String,
    /// First 12 hex digits of the digest, for `kubectl get`.
    pub short_digest: String,
    /// The key that verified the signature (where it is stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_by: Option<String>,
    /// When the registry was read for that verification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
}

/// Cosign verification of an image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageVerification {
    /// Cosign public keys (PEM). The image is accepted when one of them made
    /// a valid signature for its digest.
    #[schemars(length(min = 1, max = 8))]
    pub keys: Vec<CosignKeyRef>,
}

/// Where a cosign public key (PEM) is stored: exactly one of `secretKeyRef`
/// and `configMapKeyRef`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.secretKeyRef) != has(self.configMapKeyRef)").message("give exactly one of secretKeyRef and configMapKeyRef"))]
pub struct CosignKeyRef {
    /// A key of a Secret holding the PEM public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<KeyRef>,
    /// A key of a ConfigMap holding the PEM public key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map_key_ref: Option<KeyRef>,
}

/// Where something outside the pool's pods lives on the network: pods
/// chosen by selectors, or an IP range. Exactly one of `podSelector` and
/// `cidr`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.podSelector) != has(self.cidr)").message("give exactly one of podSelector and cidr"))]
#[x_kube(validation = Rule::new("!has(self.namespaceSelector) || has(self.podSelector)").message("namespaceSelector goes with podSelector").field_path(".namespaceSelector"))]
pub struct NetworkEndpoint {
    /// Pods that serve it (in this namespace unless `namespaceSelector` is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
    /// Namespaces of the pods chosen by `podSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
    /// IP range that serves it, like 10.20.30.0/24.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64))]
    #[x_kube(validation = cidr_rule("cidr"))]
    pub cidr: Option<String>,
    /// TCP port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

/// Conditions and generation that every kind's status carries.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommonStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Current state: `Ready` (kstatus: all done), `Reconciling` (work in
    /// progress), `Stalled` (cannot progress without a change), plus the
    /// kind's own conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
