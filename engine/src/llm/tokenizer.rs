//! The tokenizer a GGUF file describes: byte-level BPE (`tokenizer.ggml.model` = `gpt2`),
//! its special tokens, and the chat prompt for one user turn.
//!
//! **Encoding** a text runs, as llama.cpp and Hugging Face's `tokenizers` do:
//! 1. special tokens (control and user-defined ones, e.g. `<|im_start|>`) are cut out of the
//!    text first when asked ([`Specials::Recognise`]), leftmost-longest; otherwise they are
//!    plain text;
//! 2. the pre-tokenizer (`tokenizer.ggml.pre`) splits each remaining stretch into words: for
//!    `smollm` (and `starcoder`, `refact`, `command-r`, `codeshell`, `exaone`, `minerva`,
//!    which llama.cpp treats alike) every numeric character (`\p{N}`) is a word of its own,
//!    and the rest is split by GPT-2's pattern
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`; `gpt2`
//!    (and `mpt`, `olmo`, `jais`) applies GPT-2's pattern alone. The `regex` crate has no
//!    look-ahead, so `\s+(?!\S)` is done by hand: a run of whitespace followed by more text
//!    gives its last character back to the next word (which then starts with it);
//! 3. each word's UTF-8 bytes become GPT-2's byte characters (`Ġ` for a space, …) and are
//!    merged pair by pair, lowest merge rank first (leftmost among equals), as the merges
//!    (`tokenizer.ggml.merges`, rank = position) allow; each final symbol is a token.
//!
//! **Decoding** maps a normal token's characters back to bytes; control and user-defined
//! tokens decode to their text. Invalid UTF-8 (a token sequence cut inside a character)
//! decodes with replacement characters; [`Tokenizer::token_bytes`] gives the raw bytes.
//!
//! **Chat**: `tokenizer.chat_template` is a Jinja template; rather than run Jinja, the
//! templates of the ChatML family (`<|im_start|>role\n…<|im_end|>\n`, SmolLM2's and Qwen2's)
//! are recognised, with the default system turn some of them add when the conversation has
//! none. Any other template is refused by [`Tokenizer::chat_prompt`].
//!
//! SentencePiece vocabularies (`tokenizer.ggml.model` = `llama`) are refused for now.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use aho_corasick::{AhoCorasick, MatchKind};

use super::gguf::{Gguf, GgufError};

/// Why a tokenizer could not be built from a file's metadata, or a call failed.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// A key is missing or of the wrong type.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// `tokenizer.ggml.model` names a tokenizer this module does not implement.
    #[error("tokenizer.ggml.model `{0}` is not supported (gpt2 byte-level BPE is)")]
    UnsupportedModel(String),
    /// `tokenizer.ggml.pre` names a pre-tokenizer this module does not implement.
    #[error("tokenizer.ggml.pre `{0}` is not supported (smollm, gpt2 and their aliases are)")]
    UnsupportedPreTokenizer(String),
    /// A merge that is not two tokens whose concatenation is a token.
    #[error("tokenizer.ggml.merges[{index}] = {merge:?}: {reason}")]
    BadMerge {
        /// Its rank.
        index: usize,
        /// The merge.
        merge: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The token types do not match the tokens.
    #[error("tokenizer.ggml.token_type has {types} entries for {tokens} tokens")]
    TokenTypes {
        /// Entries of `tokenizer.ggml.token_type`.
        types: usize,
        /// Entries of `tokenizer.ggml.tokens`.
        tokens: usize,
    },
    /// A special token id past the vocabulary.
    #[error("metadata `{key}` = {id} is not a token id (the vocabulary has {vocab})")]
    BadTokenId {
        /// The key.
        key: String,
        /// The id.
        id: u64,
        /// The vocabulary's size.
        vocab: usize,
    },
    /// An id past the vocabulary, given to decode.
    #[error("token id {id} is not in the vocabulary of {vocab}")]
    UnknownToken {
        /// The id.
        id: u32,
        /// The vocabulary's size.
        vocab: usize,
    },
    /// The file has no chat template.
    #[error("the model has no chat template (tokenizer.chat_template)")]
    NoChatTemplate,
    /// The chat template is not of a recognised family.
    #[error("the chat template is not ChatML-style (it starts {0:?})")]
    UnsupportedChatTemplate(String),
}

/// What a token is (`tokenizer.ggml.token_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Text.
    Normal,
    /// The unknown token.
    Unknown,
    /// A control token (`<|im_start|>`): recognised in text only when asked.
    Control,
    /// A token added by the model's authors, matched like a control token.
    UserDefined,
    /// Unused.
    Unused,
    /// A single byte, `<0xAB>` (SentencePiece vocabularies).
    Byte,
}

impl TokenKind {
    fn from_id(id: i64) -> TokenKind {
        match id {
            2 => TokenKind::Unknown,
            3 => TokenKind::Control,
            4 => TokenKind::UserDefined,
            5 => TokenKind::Unused,
            6 => TokenKind::Byte,
            _ => TokenKind::Normal,
        }
    }
}

/// Whether special tokens written in a text are recognised as such.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Specials {
    /// `<|im_start|>` in the text is the control token.
    Recognise,
    /// `<|im_start|>` in the text is text like any other.
    AsText,
}

/// How text is split into words before BPE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PreTokenizer {
    /// GPT-2's pattern.
    Gpt2,
    /// Every numeric character alone, then GPT-2's pattern.
    Gpt2Digits,
}

impl PreTokenizer {
    fn named(name: &str) -> Option<PreTokenizer> {
        match name {
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva" => Some(PreTokenizer::Gpt2Digits),
            "gpt2" | "mpt" | "olmo" | "jais" => Some(PreTokenizer::Gpt2),
            _ => None,
        }
    }
}

/// GPT-2's pattern without its look-ahead alternative (see the module docs).
const GPT2_PATTERN: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+";

/// A chat template family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per turn, then `<|im_start|>assistant\n`.
    ChatMl {
        /// The system turn added when the conversation has none.
        default_system: Option<String>,
    },
}

impl ChatTemplate {
    /// Recognises a Jinja chat template's family.
    fn recognise(template: &str) -> Option<ChatTemplate> {
        if !template.contains("<|im_start|>") || !template.contains("<|im_end|>") {
            return None;
        }
        // A literal system turn, with a real or an escaped newline.
        let default_system = ["<|im_start|>system\n", "<|im_start|>system\\n"]
            .iter()
            .find_map(|opening| {
                let rest = &template[template.find(opening)? + opening.len()..];
                let text = &rest[..rest.find("<|im_end|>")?];
                let literal = !["{{", "{%", "'", "\""].iter().any(|s| text.contains(s));
                literal.then(|| text.replace("\\n", "\n"))
            });
        Some(ChatTemplate::ChatMl { default_system })
    }

    /// The prompt for one user turn, ready for the assistant's answer.
    pub fn user_turn(&self, user: &str) -> String {
        match self {
            ChatTemplate::ChatMl { default_system } => {
                let system = default_system
                    .as_deref()
                    .map(|s| format!("<|im_start|>system\n{s}<|im_end|>\n"))
                    .unwrap_or_default();
                format!("{system}<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
            }
        }
    }
}

/// A byte-level BPE tokenizer built from a GGUF file's metadata.
pub struct Tokenizer {
    /// Each token's text (byte-level characters for normal tokens).
    tokens: Vec<String>,
    kinds: Vec<TokenKind>,
    /// Token ids by text.
    ids: HashMap<String, u32>,
    /// For each mergeable pair of tokens: the merge's rank and the token it makes.
    merges: HashMap<(u32, u32), (u32, u32)>,
    /// The token of each single byte (SmolLM2's vocabulary lacks a few control bytes).
    byte_tokens: [Option<u32>; 256],
    /// Byte-level characters back to bytes.
    char_bytes: HashMap<char, u8>,
    pre: PreTokenizer,
    words: regex::Regex,
    /// Control and user-defined tokens: their matcher and ids (in the matcher's order).
    specials: Option<(AhoCorasick, Vec<u32>)>,
    bos: Option<u32>,
    eos: Option<u32>,
    padding: Option<u32>,
    add_bos: bool,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("tokens", &self.tokens.len())
            .field("merges", &self.merges.len())
            .field("pre", &self.pre)
            .finish()
    }
}

/// GPT-2's map of bytes to printable characters: printable Latin-1 bytes stand for
/// themselves, the others for the characters from U+0100 on, in byte order.
fn byte_chars() -> [char; 256] {
    let mut out = ['\0'; 256];
    let mut next = 256u32;
    for (b, slot) in out.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let code = if printable {
            b as u32
        } else {
            next += 1;
            next - 1
        };
        *slot = char::from_u32(code).unwrap_or('\u{FFFD}');
    }
    out
}

impl Tokenizer {
    /// Builds the tokenizer the file's `tokenizer.*` metadata describes.
    pub fn from_gguf(gguf: &Gguf) -> Result<Tokenizer, TokenizerError> {
        let model = gguf.str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel(model.into()));
        }
        let pre_name = gguf.str("tokenizer.ggml.pre")?;
        let pre = PreTokenizer::named(pre_name)
            .ok_or_else(|| TokenizerError::UnsupportedPreTokenizer(pre_name.into()))?;
        let tokens_key = "tokenizer.ggml.tokens";
        let tokens: Vec<String> = gguf
            .array(tokens_key)?
            .as_strs()
            .ok_or_else(|| GgufError::WrongType {
                key: tokens_key.into(),
                expected: "an array of strings",
                found: "another array".into(),
            })?
            .to_vec();
        let vocab = tokens.len();
        let kinds = match gguf.get("tokenizer.ggml.token_type") {
            None => vec![TokenKind::Normal; vocab],
            Some(_) => {
                let key = "tokenizer.ggml.token_type";
                let types = gguf
                    .array(key)?
                    .to_i64s()
                    .ok_or_else(|| GgufError::WrongType {
                        key: key.into(),
                        expected: "an array of integers",
                        found: "another array".into(),
                    })?;
                if types.len() != vocab {
                    return Err(TokenizerError::TokenTypes {
                        types: types.len(),
                        tokens: vocab,
                    });
                }
                types.into_iter().map(TokenKind::from_id).collect()
            }
        };
        let ids: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();

        let chars = byte_chars();
        let byte_tokens = chars.map(|c| ids.get(&c.to_string()).copied());
        let char_bytes = chars
            .iter()
            .enumerate()
            .map(|(b, &c)| (c, b as u8))
            .collect();

        let merges_key = "tokenizer.ggml.merges";
        let merge_texts =
            gguf.array(merges_key)?
                .as_strs()
                .ok_or_else(|| GgufError::WrongType {
                    key: merges_key.into(),
                    expected: "an array of strings",
                    found: "another array".into(),
                })?;
        let mut merges = HashMap::with_capacity(merge_texts.len());
        for (index, merge) in merge_texts.iter().enumerate() {
            let bad = |reason| TokenizerError::BadMerge {
                index,
                merge: merge.clone(),
                reason,
            };
            let (left, right) = merge.split_once(' ').ok_or_else(|| bad("no space"))?;
            let id = |t: &str| ids.get(t).copied();
            let (Some(l), Some(r)) = (id(left), id(right)) else {
                return Err(bad("a side is not a token"));
            };
            let merged = id(&format!("{left}{right}"))
                .ok_or_else(|| bad("the merged text is not a token"))?;
            // A pair listed twice keeps its first (lowest) rank.
            merges.entry((l, r)).or_insert((index as u32, merged));
        }

        let special_ids: Vec<u32> = (0..vocab as u32)
            .filter(|&i| {
                matches!(
                    kinds[i as usize],
                    TokenKind::Control | TokenKind::UserDefined
                ) && !tokens[i as usize].is_empty()
            })
            .collect();
        let specials = if special_ids.is_empty() {
            None
        } else {
            let texts = special_ids.iter().map(|&i| &tokens[i as usize]);
            let matcher = AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .build(texts)
                .ok();
            matcher.map(|m| (m, special_ids))
        };
        let token_id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match gguf.get(key) {
                None => Ok(None),
                Some(_) => {
                    let id = gguf.u64(key)?;
                    if id >= vocab as u64 {
                        return Err(TokenizerError::BadTokenId {
                            key: key.into(),
                            id,
                            vocab,
                        });
                    }
                    Ok(Some(id as u32))
                }
            }
        };
        let add_bos = match gguf.get("tokenizer.ggml.add_bos_token") {
            None => false,
            Some(v) => v.as_bool().ok_or_else(|| GgufError::WrongType {
                key: "tokenizer.ggml.add_bos_token".into(),
                expected: "a bool",
                found: v.type_name(),
            })?,
        };
        let chat_template = match gguf.get("tokenizer.chat_template") {
            None => None,
            Some(_) => Some(gguf.str("tokenizer.chat_template")?.to_owned()),
        };
        Ok(Tokenizer {
            words: regex::Regex::new(GPT2_PATTERN).map_err(|_| {
                TokenizerError::UnsupportedPreTokenizer(format!("{pre_name} (pattern)"))
            })?,
            bos: token_id("tokenizer.ggml.bos_token_id")?,
            eos: token_id("tokenizer.ggml.eos_token_id")?,
            padding: token_id("tokenizer.ggml.padding_token_id")?,
            tokens,
            kinds,
            ids,
            merges,
            byte_tokens,
            char_bytes,
            pre,
            specials,
            add_bos,
            chat_template,
        })
    }

    /// The number of tokens.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The beginning-of-sequence token, if the model has one.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    /// The end-of-sequence token, if the model has one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    /// The padding token, if the model has one.
    pub fn padding(&self) -> Option<u32> {
        self.padding
    }

    /// Whether a prompt should start with [`Tokenizer::bos`] (`tokenizer.ggml.add_bos_token`).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The id of the token whose text is `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.ids.get(text).copied()
    }

    /// The text of token `id` as stored (byte-level characters for normal tokens).
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    /// What token `id` is.
    pub fn token_kind(&self, id: u32) -> Option<TokenKind> {
        self.kinds.get(id as usize).copied()
    }

    /// The tokens of `text` (no BOS added).
    pub fn encode(&self, text: &str, specials: Specials) -> Vec<u32> {
        let mut out = Vec::new();
        match (&self.specials, specials) {
            (Some((matcher, ids)), Specials::Recognise) => {
                let mut at = 0;
                for m in matcher.find_iter(text) {
                    self.encode_plain(&text[at..m.start()], &mut out);
                    out.push(ids[m.pattern().as_usize()]);
                    at = m.end();
                }
                self.encode_plain(&text[at..], &mut out);
            }
            _ => self.encode_plain(text, &mut out),
        }
        out
    }

    /// Text with no special tokens: pre-tokenize, then BPE each word.
    fn encode_plain(&self, text: &str, out: &mut Vec<u32>) {
        match self.pre {
            PreTokenizer::Gpt2 => self.encode_gpt2(text, out),
            PreTokenizer::Gpt2Digits => {
                let mut start = 0;
                for (i, c) in text.char_indices() {
                    if c.is_numeric() {
                        self.encode_gpt2(&text[start..i], out);
                        self.bpe(&text[i..i + c.len_utf8()], out);
                        start = i + c.len_utf8();
                    }
                }
                self.encode_gpt2(&text[start..], out);
            }
        }
    }

    /// GPT-2's pattern over `text`, each word through BPE.
    fn encode_gpt2(&self, text: &str, out: &mut Vec<u32>) {
        let mut at = 0;
        while at < text.len() {
            let Some(m) = self.words.find_at(text, at) else {
                self.bpe(&text[at..], out);
                return;
            };
            if m.start() > at {
                self.bpe(&text[at..m.start()], out);
            }
            let mut end = m.end();
            let word = m.as_str();
            // `\s+(?!\S)`: whitespace followed by more text leaves its last character to
            // the next word (a lone one stays: then `\s+` matched it).
            let last = word.char_indices().last().filter(|&(i, _)| i > 0);
            if let Some((last, _)) = last
                && end < text.len()
                && word.chars().all(char::is_whitespace)
            {
                end = m.start() + last;
            }
            self.bpe(&text[m.start()..end], out);
            at = end;
        }
    }

    /// Byte-level BPE of one word: merges the adjacent pair of lowest rank (leftmost among
    /// equals) until none merges.
    fn bpe(&self, word: &str, out: &mut Vec<u32>) {
        let bytes = word.as_bytes();
        // Symbols as a linked list: token, previous, next (usize::MAX: none).
        // A byte with no token is dropped, as Hugging Face's BPE (without an unknown token)
        // and llama.cpp drop it.
        let mut token: Vec<u32> = bytes
            .iter()
            .filter_map(|&b| self.byte_tokens[b as usize])
            .collect();
        let n = token.len();
        if n == 0 {
            return;
        }
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut next: Vec<usize> = (1..=n)
            .map(|i| if i == n { usize::MAX } else { i })
            .collect();
        let mut alive = vec![true; n];
        // Candidate merges: (rank, left symbol, its token, the right's token).
        type Queue = BinaryHeap<Reverse<(u32, usize, u32, u32)>>;
        let mut queue = Queue::new();
        let push = |queue: &mut Queue, token: &[u32], left: usize, right: usize| {
            if let Some(&(rank, _)) = self.merges.get(&(token[left], token[right])) {
                queue.push(Reverse((rank, left, token[left], token[right])));
            }
        };
        for i in 0..n.saturating_sub(1) {
            push(&mut queue, &token, i, i + 1);
        }
        while let Some(Reverse((_, left, l, r))) = queue.pop() {
            let right = next[left];
            // Stale: a side was merged away or changed since this candidate was queued.
            if !alive[left] || right == usize::MAX || token[left] != l || token[right] != r {
                continue;
            }
            let Some(&(_, merged)) = self.merges.get(&(l, r)) else {
                continue;
            };
            token[left] = merged;
            alive[right] = false;
            next[left] = next[right];
            if next[right] != usize::MAX {
                prev[next[right]] = left;
            }
            if prev[left] != usize::MAX {
                push(&mut queue, &token, prev[left], left);
            }
            if next[left] != usize::MAX {
                push(&mut queue, &token, left, next[left]);
            }
        }
        let mut i = 0;
        while i != usize::MAX {
            out.push(token[i]);
            i = next[i];
        }
    }

    /// The bytes token `id` stands for.
    pub fn token_bytes(&self, id: u32) -> Result<Vec<u8>, TokenizerError> {
        let unknown = || TokenizerError::UnknownToken {
            id,
            vocab: self.tokens.len(),
        };
        let text = self.tokens.get(id as usize).ok_or_else(unknown)?;
        Ok(match self.kinds[id as usize] {
            TokenKind::Normal => {
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    match self.char_bytes.get(&c) {
                        Some(&b) => out.push(b),
                        None => out.extend(c.to_string().as_bytes()),
                    }
                }
                out
            }
            TokenKind::Byte => text
                .strip_prefix("<0x")
                .and_then(|t| t.strip_suffix('>'))
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                .map(|b| vec![b])
                .unwrap_or_else(|| text.as_bytes().to_vec()),
            _ => text.as_bytes().to_vec(),
        })
    }

    /// The text of `ids` (special tokens as their text; invalid UTF-8 replaced).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        let mut bytes = Vec::new();
        for &id in ids {
            bytes.extend(self.token_bytes(id)?);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The model's chat template (Jinja source), if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The prompt of a conversation of one user turn, as the model's chat template writes it,
    /// ending where the assistant's answer starts. Encode it with [`Specials::Recognise`].
    pub fn chat_prompt(&self, user: &str) -> Result<String, TokenizerError> {
        let template = self
            .chat_template
            .as_deref()
            .ok_or(TokenizerError::NoChatTemplate)?;
        let family = ChatTemplate::recognise(template).ok_or_else(|| {
            TokenizerError::UnsupportedChatTemplate(template.chars().take(60).collect())
        })?;
        Ok(family.user_turn(user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_chars_are_gpt2s() {
        let chars = byte_chars();
        assert_eq!(chars[b' ' as usize], 'Ġ');
        assert_eq!(chars[b'\n' as usize], 'Ċ');
        assert_eq!(chars[b'a' as usize], 'a');
        assert_eq!(chars[0], 'Ā');
        let mut sorted = chars.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256);
    }

    #[test]
    fn chatml_templates_are_recognised_with_their_default_system_turn() {
        let smollm = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are SmolLM<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}";
        assert_eq!(
            ChatTemplate::recognise(smollm),
            Some(ChatTemplate::ChatMl {
                default_system: Some("You are SmolLM".into())
            })
        );
        let plain = "{% for m in messages %}{{'<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n'}}{% endfor %}";
        let t = ChatTemplate::recognise(plain).unwrap();
        assert_eq!(
            t,
            ChatTemplate::ChatMl {
                default_system: None
            }
        );
        assert_eq!(
            t.user_turn("hi"),
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let dynamic = "{{ '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>' }}";
        assert_eq!(
            ChatTemplate::recognise(dynamic),
            Some(ChatTemplate::ChatMl {
                default_system: None
            })
        );
        assert_eq!(ChatTemplate::recognise("[INST] {{ m }} [/INST]"), None);
    }
}
