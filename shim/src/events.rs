//! Publishing task events to containerd (through the `containerd-shim` crate's queued,
//! retrying publisher) in the shim's namespace.

use containerd_shim::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::ttrpc::context::Context;

/// The shim's event sink.
pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

impl Events {
    /// Events for `namespace`.
    pub fn new(publisher: RemotePublisher, namespace: &str) -> Self {
        Self {
            publisher,
            namespace: namespace.to_string(),
        }
    }

    /// The containerd namespace of the shim's tasks.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Queues one event; a failure is logged (the publisher retries on its own).
    pub async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        log::debug!("event {topic}");
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            log::error!("publishing {topic}: {e}");
        }
    }
}
