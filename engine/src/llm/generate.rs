//! One conversation with a model: its tokens, its KV cache, generation and scoring.
//!
//! A [`Session`] shares its model (`Arc<LlamaModel>`) and tokenizer with every other session
//! and owns the rest: the conversation's tokens and their keys and values. Tokens enter the
//! conversation by [`Session::feed`] (evaluated in chunks of
//! [`SessionOptions::prefill_chunk`] tokens, each a batch through the model), by
//! [`Session::generate`] (its prompt, then each token it samples) and by [`Session::score`].
//!
//! **Generation** samples a token from the last position's logits ([`Sampler`]), hands it to
//! the caller's callback with its text, and feeds it back, until one of:
//! - a **stop token** is sampled: the model's end-of-sequence token and those of the
//!   end-of-turn tokens it has (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `<|end|>`), plus
//!   [`GenerateOptions::stop_tokens`]; it is part of the conversation but its text is not
//!   emitted;
//! - a **stop string** appears in the text: the text before it is emitted, the stop string
//!   and anything after it are not. A stop string may span tokens: text that could be the
//!   start of one is held back until it is known not to be (then it is emitted, with a later
//!   token's piece);
//! - `max_tokens` tokens were sampled, or the cache is full;
//! - the callback returns [`ControlFlow::Break`] (text held back then is dropped).
//!
//! **Text** is streamed as [`Piece`]s. A piece never splits a UTF-8 character: bytes of an
//! incomplete character wait for the next token (a byte sequence that cannot become a
//! character is replaced by U+FFFD). Control tokens have no text; user-defined ones have
//! theirs. So a token's piece may be empty, and when generation ends by a stop token, by
//! `max_tokens` or a full cache, the text still held back is flushed as a last piece with
//! no token. [`Generation::text`] is the concatenation of every piece.
//!
//! The last sampled token (the stop token included) is part of the conversation but is not
//! yet evaluated: the next call evaluates it first, so a conversation can go on where a
//! generation stopped without paying for a token nobody may need.
//!
//! **Scoring** ([`Session::score`]) evaluates tokens as a continuation of the conversation and
//! sums each one's log-probability given everything before it (`ln softmax(logits)[token]`,
//! in f64). The very first token of a conversation has nothing before it and is not scored.
//!
//! **Memory**: [`Session::cache_bytes`] is what the session owns (cache, logits, tokens);
//! the model's weights are [`LlamaModel::weight_bytes`], counted once for all sessions.

use std::ops::ControlFlow;
use std::sync::Arc;

use super::kv::{KvCache, KvPrecision};
use super::model::{LlamaModel, Logits, ModelError};
use super::sample::{Sampler, Sampling};
use super::tokenizer::{TokenKind, Tokenizer, TokenizerError};

/// Why a session could not be made, or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The model refused a forward pass (context full, unknown token, …).
    #[error(transparent)]
    Model(#[from] ModelError),
    /// The tokenizer refused a token.
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    /// The tokenizer and the model do not have the same vocabulary.
    #[error("the tokenizer has {tokenizer} tokens, the model {model}")]
    VocabMismatch {
        /// The model's vocabulary.
        model: usize,
        /// The tokenizer's.
        tokenizer: usize,
    },
    /// Generation was asked for with no token to start from.
    #[error("nothing to generate from: the conversation and the prompt are empty")]
    EmptyPrompt,
}

/// A session's fixed choices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOptions {
    /// The most positions the conversation may take (capped at the model's context length).
    pub context: usize,
    /// How keys and values are stored.
    pub kv_precision: KvPrecision,
    /// Tokens evaluated per batch when feeding a prompt.
    pub prefill_chunk: usize,
}

impl Default for SessionOptions {
    fn default() -> SessionOptions {
        SessionOptions {
            context: 4096,
            kv_precision: KvPrecision::F16,
            prefill_chunk: 128,
        }
    }
}

/// What one generation may do.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// How each token is chosen.
    pub sampling: Sampling,
    /// The most tokens sampled.
    pub max_tokens: usize,
    /// Texts that end generation, not emitted (empty ones are ignored).
    pub stop_strings: Vec<String>,
    /// Tokens that end generation besides the model's own (see the module docs).
    pub stop_tokens: Vec<u32>,
}

impl Default for GenerateOptions {
    fn default() -> GenerateOptions {
        GenerateOptions {
            sampling: Sampling::default(),
            max_tokens: 256,
            stop_strings: Vec::new(),
            stop_tokens: Vec::new(),
        }
    }
}

/// A piece of generated text, handed to the callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece<'a> {
    /// The token sampled; `None` for the text held back and flushed at the end.
    pub token: Option<u32>,
    /// The text this piece adds (whole characters; possibly empty).
    pub text: &'a str,
}

/// Why generation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// A stop token was sampled.
    StopToken(u32),
    /// The stop string of this index in [`GenerateOptions::stop_strings`] appeared.
    StopString(usize),
    /// `max_tokens` tokens were sampled.
    MaxTokens,
    /// The cache has no room for another token.
    ContextFull,
    /// The callback asked to stop.
    Callback,
}

/// What a generation produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Every token sampled, the stop token included.
    pub tokens: Vec<u32>,
    /// The text emitted (the pieces, concatenated).
    pub text: String,
    /// Why it ended.
    pub stop: StopReason,
}

/// The log-likelihood of scored tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    /// `Σ ln p(token | everything before it)`.
    pub log_likelihood: f64,
    /// How many tokens were scored.
    pub tokens: usize,
}

/// One conversation: its tokens and their cache.
#[derive(Debug)]
pub struct Session {
    model: Arc<LlamaModel>,
    tokenizer: Arc<Tokenizer>,
    cache: KvCache,
    /// Every token of the conversation; the first `cache.len()` are evaluated.
    tokens: Vec<u32>,
    /// The logits after the last evaluated token, when every token is evaluated.
    logits: Option<Vec<f32>>,
    prefill_chunk: usize,
}

impl Session {
    /// A new, empty conversation with `model`, whose text `tokenizer` reads and writes.
    pub fn new(
        model: Arc<LlamaModel>,
        tokenizer: Arc<Tokenizer>,
        options: &SessionOptions,
    ) -> Result<Session, SessionError> {
        if tokenizer.vocab_size() != model.vocab_size() {
            return Err(SessionError::VocabMismatch {
                model: model.vocab_size(),
                tokenizer: tokenizer.vocab_size(),
            });
        }
        Ok(Session {
            cache: model.new_cache(options.kv_precision, options.context),
            model,
            tokenizer,
            tokens: Vec::new(),
            logits: None,
            prefill_chunk: options.prefill_chunk.max(1),
        })
    }

    /// The model.
    pub fn model(&self) -> &Arc<LlamaModel> {
        &self.model
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &Arc<Tokenizer> {
        &self.tokenizer
    }

    /// The conversation's tokens.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The most tokens the conversation may hold.
    pub fn capacity(&self) -> usize {
        self.cache.capacity()
    }

    /// Bytes the session owns now: its cache, logits and tokens.
    pub fn cache_bytes(&self) -> usize {
        self.cache.bytes()
            + self.logits.as_ref().map_or(0, |l| l.capacity() * 4)
            + self.tokens.capacity() * 4
    }

    /// Bytes each further token of the conversation adds to the cache.
    pub fn bytes_per_token(&self) -> usize {
        self.cache.bytes_per_position()
    }

    /// Forgets the conversation.
    pub fn reset(&mut self) {
        self.cache.truncate(0);
        self.tokens.clear();
        self.logits = None;
    }

    /// The logits predicting the next token, once [`Session::feed`] has evaluated the
    /// conversation (`None` before any token, or while the last sampled token waits).
    pub fn logits(&self) -> Option<&[f32]> {
        self.logits.as_deref()
    }

    /// Appends `tokens` to the conversation and evaluates every token not yet evaluated.
    /// Refused as a whole, with nothing appended, if a token is not in the vocabulary or
    /// the cache has no room for them.
    pub fn feed(&mut self, tokens: &[u32]) -> Result<(), SessionError> {
        self.check(tokens)?;
        self.tokens.extend_from_slice(tokens);
        self.evaluate()
    }

    fn check(&self, tokens: &[u32]) -> Result<(), ModelError> {
        let vocab = self.model.vocab_size();
        if let Some(&token) = tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(ModelError::UnknownToken { token, vocab });
        }
        let waiting = self.tokens.len() - self.cache.len();
        if waiting + tokens.len() > self.cache.room() {
            return Err(ModelError::ContextFull {
                used: self.cache.len(),
                capacity: self.cache.capacity(),
                asked: waiting + tokens.len(),
            });
        }
        Ok(())
    }

    /// Evaluates the tokens after the cache's, keeping the last logits.
    fn evaluate(&mut self) -> Result<(), SessionError> {
        while self.cache.len() < self.tokens.len() {
            let start = self.cache.len();
            let end = self.tokens.len().min(start + self.prefill_chunk);
            self.logits = None;
            let logits =
                self.model
                    .forward(&mut self.cache, &self.tokens[start..end], Logits::Last)?;
            self.logits = Some(logits);
        }
        Ok(())
    }

    /// Feeds `prompt`, then samples tokens until a stop (see the module docs), handing each
    /// one's [`Piece`] to `on_piece`.
    pub fn generate(
        &mut self,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_piece: impl FnMut(Piece<'_>) -> ControlFlow<()>,
    ) -> Result<Generation, SessionError> {
        if self.tokens.is_empty() && prompt.is_empty() {
            return Err(SessionError::EmptyPrompt);
        }
        self.feed(prompt)?;
        let stop_tokens = self.stop_tokens(&options.stop_tokens);
        let mut sampler = Sampler::new(options.sampling.clone());
        let mut text = TextStream::new(&options.stop_strings);
        let mut generation = Generation {
            tokens: Vec::new(),
            text: String::new(),
            stop: StopReason::MaxTokens,
        };
        let mut emit = |generation: &mut Generation, token, piece: &str| {
            generation.text.push_str(piece);
            on_piece(Piece { token, text: piece })
        };
        loop {
            if generation.tokens.len() >= options.max_tokens {
                break;
            }
            // Every token of the conversation must fit the cache, the last sampled included.
            if self.tokens.len() >= self.cache.capacity() {
                generation.stop = StopReason::ContextFull;
                break;
            }
            self.evaluate()?;
            let Some(logits) = self.logits.take() else {
                return Err(SessionError::EmptyPrompt);
            };
            let token = sampler.sample(&logits, &self.tokens);
            self.tokens.push(token);
            generation.tokens.push(token);
            if stop_tokens.contains(&token) {
                generation.stop = StopReason::StopToken(token);
                break;
            }
            let (piece, stopped) = text.push(&self.token_text(token)?);
            if let Some(index) = stopped {
                if !piece.is_empty() {
                    let _ = emit(&mut generation, Some(token), &piece);
                }
                generation.stop = StopReason::StopString(index);
                return Ok(generation);
            }
            if emit(&mut generation, Some(token), &piece).is_break() {
                generation.stop = StopReason::Callback;
                return Ok(generation);
            }
        }
        let rest = text.finish();
        if !rest.is_empty() {
            let _ = emit(&mut generation, None, &rest);
        }
        Ok(generation)
    }

    /// The bytes a generated token adds to the text (none for control tokens).
    fn token_text(&self, token: u32) -> Result<Vec<u8>, TokenizerError> {
        match self.tokenizer.token_kind(token) {
            Some(TokenKind::Normal | TokenKind::UserDefined | TokenKind::Byte) => {
                self.tokenizer.token_bytes(token)
            }
            _ => Ok(Vec::new()),
        }
    }

    fn stop_tokens(&self, extra: &[u32]) -> Vec<u32> {
        let t = &self.tokenizer;
        let mut out: Vec<u32> = extra.to_vec();
        out.extend(t.eos());
        out.extend(
            ["<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>"]
                .iter()
                .filter_map(|s| t.token_id(s))
                .filter(|&id| t.token_kind(id) == Some(TokenKind::Control)),
        );
        out
    }

    /// Evaluates `tokens` as the conversation's continuation and returns the sum of their
    /// log-probabilities (the conversation's first token is not scored). Refused as a
    /// whole, like [`Session::feed`], if they do not fit.
    pub fn score(&mut self, tokens: &[u32]) -> Result<Score, SessionError> {
        self.check(tokens)?;
        self.evaluate()?;
        let vocab = self.model.vocab_size();
        let mut score = Score {
            log_likelihood: 0.0,
            tokens: 0,
        };
        let mut previous = self.logits.take();
        for chunk in tokens.chunks(self.prefill_chunk) {
            let all = self.model.forward(&mut self.cache, chunk, Logits::All)?;
            self.tokens.extend_from_slice(chunk);
            for (i, &token) in chunk.iter().enumerate() {
                let logits = match i {
                    0 => previous.as_deref(),
                    _ => all.get((i - 1) * vocab..i * vocab),
                };
                if let Some(logits) = logits {
                    score.log_likelihood += log_probability(logits, token);
                    score.tokens += 1;
                }
            }
            previous = all.get(all.len() - vocab..).map(<[f32]>::to_vec);
        }
        self.logits = previous;
        Ok(score)
    }
}

/// `ln softmax(logits)[token]`, in f64.
pub fn log_probability(logits: &[f32], token: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let l = logits
        .get(token as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    f64::from(l - max) - sum.ln()
}

/// Generated bytes to emittable text: whole characters, with anything that could still
/// become a stop string held back.
#[derive(Debug)]
struct TextStream {
    stops: Vec<String>,
    /// The start of a character not yet complete.
    partial: Vec<u8>,
    /// Text not emitted yet: a suffix that is the start of a stop string.
    held: String,
}

impl TextStream {
    fn new(stops: &[String]) -> TextStream {
        TextStream {
            stops: stops.to_vec(),
            partial: Vec::new(),
            held: String::new(),
        }
    }

    /// Adds `bytes`; returns the text that can be emitted and, if a stop string is now
    /// complete, its index (the text returned then is what came before it).
    fn push(&mut self, bytes: &[u8]) -> (String, Option<usize>) {
        self.partial.extend_from_slice(bytes);
        loop {
            match std::str::from_utf8(&self.partial) {
                Ok(s) => {
                    self.held.push_str(s);
                    self.partial.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // Valid by `valid_up_to`; `from_utf8_lossy` cannot replace anything here.
                    self.held
                        .push_str(&String::from_utf8_lossy(&self.partial[..valid]));
                    match e.error_len() {
                        Some(bad) => {
                            self.held.push('\u{FFFD}');
                            self.partial.drain(..valid + bad);
                        }
                        None => {
                            self.partial.drain(..valid);
                            break;
                        }
                    }
                }
            }
        }
        let found = self
            .stops
            .iter()
            .enumerate()
            .filter(|(_, s)| !s.is_empty())
            .filter_map(|(i, s)| self.held.find(s.as_str()).map(|at| (at, i)))
            .min();
        if let Some((at, index)) = found {
            let before = self.held[..at].to_owned();
            self.held.clear();
            return (before, Some(index));
        }
        let keep_from = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let emitted = self.held[..keep_from].to_owned();
        self.held.drain(..keep_from);
        (emitted, None)
    }

    /// Everything held back, incomplete characters replaced.
    fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        out.push_str(&String::from_utf8_lossy(&self.partial));
        self.partial.clear();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&[u8]]) -> (Vec<String>, Option<usize>, String) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut t = TextStream::new(&stops);
        let mut out = Vec::new();
        for p in pieces {
            let (text, stop) = t.push(p);
            out.push(text);
            if stop.is_some() {
                return (out, stop, String::new());
            }
        }
        (out, None, t.finish())
    }

    #[test]
    fn a_stop_string_across_tokens_is_held_back_and_not_emitted() {
        let (out, stop, _) = run(&["</s>", "STOP"], &[b"Hello <", b"/", b"s> more"]);
        assert_eq!(out, ["Hello ", "", ""]);
        assert_eq!(stop, Some(0));
        // A false start is released once it cannot be a stop string.
        let (out, stop, rest) = run(&["STOP"], &[b"ST", b"ART", b" ST"]);
        assert_eq!(out, ["", "START", " "]);
        assert_eq!((stop, rest.as_str()), (None, "ST"));
        // Text before a stop string inside one token is emitted.
        let (out, stop, _) = run(&["STOP"], &[b"aSTOPb"]);
        assert_eq!((out, stop), (vec!["a".to_string()], Some(0)));
    }

    #[test]
    fn characters_are_never_split() {
        let euro = "€".as_bytes();
        let (out, _, rest) = run(
            &[],
            &[&euro[..1], &euro[1..2], &euro[2..], b"\xFFx", &euro[..2]],
        );
        assert_eq!(out, ["", "", "€", "\u{FFFD}x", ""]);
        assert_eq!(rest, "\u{FFFD}");
    }

    #[test]
    fn a_session_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<Session>();
    }

    #[test]
    fn log_probability_is_the_log_softmax() {
        let logits = [1.0f32, 2.0, 3.0];
        let total: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        for t in 0..3 {
            let want = (f64::from(logits[t]).exp() / total).ln();
            assert!((log_probability(&logits, t as u32) - want).abs() < 1e-12);
        }
        assert_eq!(log_probability(&logits, 7), f64::NEG_INFINITY);
    }
}
