//! The connection to a gateway, with the API key on every call.

use anyhow::Context as _;
use clap::Args;
use pixelmesh_proto::v1::gateway_client::GatewayClient;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

/// Largest message the client takes (a job's full record, a chunk); the gateway's own cap.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

#[derive(Debug, Clone, Args)]
pub struct Connection {
    /// The gateway's URL (gRPC and HTTP share its port).
    #[arg(
        long,
        env = "PIXELMESH_GATEWAY",
        default_value = "http://localhost:8080",
        global = true
    )]
    pub gateway: String,
    /// The API key, when the gateway requires one.
    #[arg(long, env = "PIXELMESH_API_KEY", hide_env_values = true, global = true)]
    pub api_key: Option<String>,
}

pub type Gateway = GatewayClient<InterceptedService<Channel, Key>>;

/// Adds `authorization: Bearer <key>` to each call.
#[derive(Clone)]
pub struct Key(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Key {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

impl Connection {
    /// Connects now, so a wrong address fails here with a clear message.
    pub async fn connect(&self) -> anyhow::Result<Gateway> {
        let key = match self.api_key.as_deref().map(str::trim) {
            Some(key) if !key.is_empty() => Some(
                format!("Bearer {key}")
                    .parse()
                    .map_err(|_| anyhow::anyhow!("the api key must be printable ascii"))?,
            ),
            _ => None,
        };
        let endpoint = Endpoint::from_shared(self.gateway.clone())
            .with_context(|| format!("--gateway {:?} is not a url", self.gateway))?
            .connect_timeout(std::time::Duration::from_secs(10))
            .tcp_nodelay(true);
        let channel = endpoint
            .connect()
            .await
            .with_context(|| format!("cannot reach the gateway at {}", self.gateway))?;
        Ok(GatewayClient::with_interceptor(channel, Key(key))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }
}

/// A refused or failed call as an error that says what the gateway said.
pub fn refused(what: &str, status: Status) -> anyhow::Error {
    anyhow::anyhow!("{what}: {} ({:?})", status.message(), status.code())
}
