//! Byte-level BPE tokenization through Hugging Face's `tokenizers` crate (the library behind
//! the Python `tokenizers` package, so results are identical), plus incremental decoding that
//! never splits a multi-byte character.

use std::path::Path;
use std::sync::Arc;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::processors::byte_level::ByteLevel as ByteLevelProcessor;
use tokenizers::Tokenizer as HfTokenizer;
use tokenizers::{AddedToken, Model};

use crate::chat::{ChatTemplate, TokenizerConfig};
use crate::error::{Error, Result};

pub struct Tokenizer {
    inner: HfTokenizer,
    eos_token_id: Option<u32>,
    /// The model's chat template, if its folder has one.
    chat: Option<Arc<ChatTemplate>>,
    /// A BOS id `encode` puts first when `tokenizer_config.json` asks for it (`add_bos_token`)
    /// and `tokenizer.json`'s post-processor does not add it already.
    bos: Option<u32>,
    /// `inner.get_vocab_size(true)`, which walks the added tokens on every call: kept here,
    /// since streaming asks for it once per generated token.
    vocab_size: usize,
}

/// `path` must be an existing regular file (a FIFO would block the reader).
fn check_file(path: &Path) -> Result<()> {
    if !path.exists() {
        return Err(Error::NotFound(format!(
            "tokenizer file not found: {}",
            path.display()
        )));
    }
    if !path.is_file() {
        return Err(Error::Io(format!(
            "cannot read {}: not a regular file",
            path.display()
        )));
    }
    Ok(())
}

/// The largest vocabulary `train_bpe` builds (2^21; the largest published vocabularies have
/// about 2^18 tokens): the trainer allocates per token up front, so a size from a typo
/// (`10**9`) would otherwise exhaust memory.
pub const MAX_VOCAB: usize = 1 << 21;

const EOS_NAMES: [&str; 3] = ["<|endoftext|>", "</s>", "<eos>"];

impl Tokenizer {
    /// Loads `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        check_file(path)?;
        let inner = HfTokenizer::from_file(path).map_err(|e| {
            Error::Value(format!(
                "{} is not a valid tokenizer.json: {e}",
                path.display()
            ))
        })?;
        Ok(Self::wrap(inner))
    }

    /// Builds GPT-2's byte-level BPE from the original `vocab.json` and `merges.txt`.
    pub fn from_vocab_merges(vocab: &Path, merges: &Path) -> Result<Self> {
        check_file(vocab)?;
        check_file(merges)?;
        let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
            .build()
            .map_err(|e| {
                Error::Value(format!(
                    "cannot read BPE from {} and {}: {e}",
                    vocab.display(),
                    merges.display()
                ))
            })?;
        let mut inner = HfTokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevelDecoder::default()))
            .with_post_processor(Some(ByteLevelProcessor::new(true, false, true)));
        Ok(Self::wrap(inner))
    }

    /// A tokenizer from its parts (built elsewhere, e.g. from GGUF metadata): `bos` is put
    /// first by `encode` when given.
    pub fn from_parts(
        inner: HfTokenizer,
        eos_token_id: Option<u32>,
        bos: Option<u32>,
        chat: Option<Arc<ChatTemplate>>,
    ) -> Self {
        let mut t = Self::wrap(inner);
        t.eos_token_id = eos_token_id.or(t.eos_token_id);
        t.bos = bos;
        t.chat = chat;
        t
    }

    fn wrap(inner: HfTokenizer) -> Self {
        let eos_token_id = EOS_NAMES.iter().find_map(|t| inner.token_to_id(t));
        Self {
            vocab_size: inner.get_vocab_size(true),
            inner,
            eos_token_id,
            chat: None,
            bos: None,
        }
    }

    /// A folder's tokenizer: `tokenizer.json` (or GPT-2's `vocab.json` + `merges.txt`) with
    /// what `tokenizer_config.json` / `chat_template.jinja` add (the chat template, special
    /// tokens, `add_bos_token`). `path` may also be a tokenizer.json file. None if the folder
    /// has no tokenizer files.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        if path.is_file() {
            return Self::from_file(path).map(Some);
        }
        if !path.exists() {
            return Err(Error::NotFound(format!(
                "{} does not exist",
                path.display()
            )));
        }
        let tj = path.join("tokenizer.json");
        let (v, m) = (path.join("vocab.json"), path.join("merges.txt"));
        let mut tok = if tj.exists() {
            Self::from_file(&tj)?
        } else if v.exists() && m.exists() {
            Self::from_vocab_merges(&v, &m)?
        } else {
            return Ok(None);
        };
        let cfg = TokenizerConfig::from_dir(path)?;
        if let Some(eos) = cfg.special_tokens.get("eos_token") {
            if let Some(id) = tok.inner.token_to_id(eos) {
                tok.eos_token_id = Some(id);
            }
        }
        if cfg.add_bos_token == Some(true) {
            let bos = cfg
                .special_tokens
                .get("bos_token")
                .and_then(|b| tok.inner.token_to_id(b));
            // Only if the post-processor does not already put it first.
            let probe = tok.encode_plain("a", true)?;
            tok.bos = bos.filter(|&b| probe.first() != Some(&b));
        }
        if let Some(src) = &cfg.chat_template {
            tok.chat = Some(Arc::new(ChatTemplate::new(
                src,
                cfg.special_tokens.clone(),
            )?));
        }
        Ok(Some(tok))
    }

    fn encode_plain(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| Error::Value(format!("cannot encode text: {e}")))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Text to ids as transformers' `tokenizer(text)` gives them: special tokens in the text
    /// are matched, and the post-processor (e.g. Llama 3's BOS) applies.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = self.encode_plain(text, true)?;
        if let Some(b) = self.bos {
            ids.insert(0, b);
        }
        Ok(ids)
    }

    /// The model's chat template, if it has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_deref()
    }

    /// Renders `messages` with the chat template (ValueError without one).
    pub fn apply_chat_template(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        self.chat
            .as_ref()
            .ok_or_else(|| {
                Error::Value(
                    "this model has no chat template (no 'chat_template' in tokenizer_config.json, \
                     no chat_template.jinja); use generate() with a prompt"
                        .into(),
                )
            })?
            .render(messages, add_generation_prompt, extra)
    }

    /// The rendered chat as ids, as transformers tokenizes it (no special tokens added: the
    /// template writes them).
    pub fn encode_chat(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_plain(text, false)
    }

    /// Decodes ids (special tokens are skipped); ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.check_ids(ids)?;
        self.inner
            .decode(ids, true)
            .map_err(|e| Error::Value(format!("cannot decode: {e}")))
    }

    /// Decodes generated ids: ids without a token (a model's vocabulary padded beyond the
    /// tokenizer's, as many checkpoints have) decode as nothing instead of failing after the
    /// work is done.
    pub fn decode_generated(&self, ids: &[u32]) -> Result<String> {
        let v = self.vocab_size() as u32;
        if ids.iter().all(|&i| i < v) {
            return self.decode(ids);
        }
        let known: Vec<u32> = ids.iter().copied().filter(|&i| i < v).collect();
        self.decode(&known)
    }

    pub fn check_ids(&self, ids: &[u32]) -> Result<()> {
        let v = self.vocab_size() as u32;
        match ids.iter().position(|&i| i >= v) {
            Some(p) => Err(Error::Value(format!(
                "token id {} at position {p} is out of range for a vocabulary of {v} tokens",
                ids[p]
            ))),
            None => Ok(()),
        }
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn stream(&self) -> TextStream {
        TextStream::default()
    }

    /// Trains GPT-2's kind of tokenizer on `texts`: byte-level BPE (every byte string is
    /// encodable), with `<|endoftext|>` as a special token (id 0).
    pub fn train_bpe<S: AsRef<str> + Send>(
        texts: impl Iterator<Item = S> + Send,
        vocab_size: usize,
        min_frequency: u64,
    ) -> Result<Self> {
        let alphabet = ByteLevel::alphabet();
        if vocab_size < alphabet.len() + 1 || vocab_size > MAX_VOCAB {
            return Err(Error::Value(format!(
                "vocab_size must be from {} (the 256 byte symbols and <|endoftext|>) to {MAX_VOCAB}, got {vocab_size}",
                alphabet.len() + 1
            )));
        }
        let trainer = BpeTrainerBuilder::new()
            .vocab_size(vocab_size)
            .min_frequency(min_frequency)
            .show_progress(false)
            .special_tokens(vec![AddedToken::from(EOS_NAMES[0], true)])
            .initial_alphabet(alphabet.into_iter().collect())
            .build();
        let mut inner = HfTokenizer::new(BPE::default());
        inner
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevelDecoder::default()))
            .with_post_processor(Some(ByteLevelProcessor::new(true, false, true)));
        inner
            .train(&mut TrainerWrapper::BpeTrainer(trainer), texts)
            .map_err(|e| Error::Value(format!("tokenizer training failed: {e}")))?;
        Ok(Self::wrap(inner))
    }

    /// Writes `tokenizer.json`, and GPT-2's `vocab.json` + `merges.txt`, into `dir`.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let io = |e: String| {
            Error::Io(format!(
                "cannot save the tokenizer to {}: {e}",
                dir.display()
            ))
        };
        std::fs::create_dir_all(dir).map_err(|e| io(e.to_string()))?;
        self.inner
            .save(dir.join("tokenizer.json"), false)
            .map_err(|e| io(e.to_string()))?;
        self.inner
            .get_model()
            .save(dir, None)
            .map_err(|e| io(e.to_string()))?;
        Ok(())
    }

    /// Encodes documents in parallel into one id sequence, each followed by `separator`.
    pub fn encode_documents(&self, docs: &[&str], separator: Option<u32>) -> Result<Vec<u32>> {
        let encs = self
            .inner
            .encode_batch(docs.to_vec(), false)
            .map_err(|e| Error::Value(format!("cannot encode text: {e}")))?;
        let total: usize = encs.iter().map(|e| e.len() + 1).sum();
        let mut out = Vec::with_capacity(total);
        for e in &encs {
            out.extend_from_slice(e.get_ids());
            out.extend(separator);
        }
        Ok(out)
    }
}

/// Incremental decoding state: feed ids one by one, get text pieces that join to the full
/// decoding and never end inside a multi-byte character.
#[derive(Default)]
pub struct TextStream {
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl TextStream {
    /// The text `id` completes, if any. An id without a token (padded vocabularies) adds
    /// nothing, as in `Tokenizer::decode_generated`.
    pub fn step(&mut self, tok: &Tokenizer, id: u32) -> Result<Option<String>> {
        if id as usize >= tok.vocab_size() {
            return Ok(None);
        }
        tokenizers::tokenizer::step_decode_stream(
            &tok.inner,
            vec![id],
            true,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| Error::Internal(format!("streaming decode failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE whose vocabulary is only the 256 byte symbols: every multi-byte
    /// character is split across several tokens.
    fn byte_tokenizer() -> Tokenizer {
        let mut chars: Vec<char> = ByteLevel::alphabet().into_iter().collect();
        chars.sort();
        let vocab: tokenizers::models::bpe::Vocab = chars
            .iter()
            .enumerate()
            .map(|(i, c)| (c.to_string(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, vec![])
            .build()
            .unwrap();
        let mut inner = HfTokenizer::new(bpe);
        inner
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_decoder(Some(ByteLevelDecoder::default()));
        Tokenizer::wrap(inner)
    }

    #[test]
    fn stream_never_splits_a_character() {
        let tok = byte_tokenizer();
        let text = "aé日本語🙂 x";
        let ids = tok.encode(text).unwrap();
        assert_eq!(ids.len(), text.len(), "one token per byte");
        let mut stream = tok.stream();
        let pieces: Vec<String> = ids
            .iter()
            .filter_map(|&id| stream.step(&tok, id).unwrap())
            .collect();
        assert_eq!(pieces, ["a", "é", "日", "本", "語", "🙂", " ", "x"]);
        assert_eq!(tok.decode(&ids).unwrap(), text);
        assert!(tok.decode(&[1000]).is_err());
    }
}
