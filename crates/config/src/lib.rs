//! pgstepup's configuration: a TOML file (see `deploy/pgstepup.example.toml`), overridden by
//! command-line flags, validated up front so a bad value stops the start with a message that
//! names the file, the key and what is wrong.

mod file;
mod upstream_url;

pub use file::{
    AuditConfig, AuthConfig, AuthMethod, ClientTlsConfig, Config, ConfigError, LimitsConfig,
    LogConfig, LogFormat, Overrides, ProxyConfig, RedisConfig, StepUpConfig, UpstreamConfig,
    UpstreamTlsMode, WebConfig,
};
pub use upstream_url::{UpstreamUrl, UpstreamUrlError};
