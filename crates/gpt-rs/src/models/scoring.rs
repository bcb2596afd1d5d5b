//! Scoring without generation (`Model.logits`, `Model.forward_tokens`): one forward over a
//! sequence. The KV cache and workspace of the last call are kept and reused by the next one
//! when large enough, so repeated scoring touches no fresh memory; at most one cache (of the
//! longest input seen) is held.

use std::sync::{Arc, Mutex};

use super::{CausalLm, KvCache, Logits, SeqInput, Workspace};
use crate::backend::Backend;
use crate::error::{Error, Result};

pub struct Scorer {
    model: Arc<dyn CausalLm>,
    scratch: Mutex<Option<(KvCache, Workspace)>>,
}

impl Scorer {
    pub fn new(model: Arc<dyn CausalLm>) -> Self {
        Self {
            model,
            scratch: Mutex::new(None),
        }
    }

    /// The logits of `ids`: every row (`(T, V)`, flattened) or the last one (`(V,)`).
    /// `what` names the caller in the error for an empty or over-long input.
    pub fn logits(
        &self,
        be: &dyn Backend,
        ids: &[u32],
        which: Logits,
        what: &str,
    ) -> Result<Vec<f32>> {
        let info = self.model.info();
        if ids.is_empty() || ids.len() > info.context {
            return Err(Error::Value(format!(
                "{what} needs 1 to {} token ids (the model's context), got {}",
                info.context,
                ids.len()
            )));
        }
        // Another thread's call may hold the scratch: then this one gets its own.
        let reused = self.scratch.try_lock().ok().and_then(|mut s| s.take());
        let (mut cache, mut ws) = match reused {
            Some((cache, ws)) if cache.capacity() >= ids.len() => (cache, ws),
            _ => (self.model.new_cache(ids.len())?, Workspace::default()),
        };
        cache.len = 0;
        self.model.forward(
            be,
            &mut [SeqInput {
                tokens: ids,
                cache: &mut cache,
            }],
            which,
            &mut ws,
        )?;
        let rows = if which == Logits::All { ids.len() } else { 1 };
        let mut logits = std::mem::take(&mut ws.logits);
        logits.truncate(rows * info.vocab_size);
        if let Ok(mut s) = self.scratch.try_lock() {
            *s = Some((cache, ws));
        }
        Ok(logits)
    }
}
