//! Chat templates: a model's Jinja template (`tokenizer_config.json`'s `chat_template`, or
//! `chat_template.jinja`) rendered with minijinja, set up as transformers' `apply_chat_template`
//! sets up Jinja (trim_blocks, lstrip_blocks, loop controls, `raise_exception`,
//! `strftime_now`, a `tojson` that writes what Python's `json.dumps` writes, Python string and
//! dict methods through minijinja-contrib's pycompat), so the text is byte-identical.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::value::{Kwargs, ValueKind};
use minijinja::{Environment, ErrorKind, Value};

use crate::checkpoint::read_text_file;
use crate::error::{Error, Result};

pub struct ChatTemplate {
    env: Environment<'static>,
    /// The special tokens the template may use (`bos_token`, `eos_token` ...).
    tokens: BTreeMap<String, String>,
}

/// A special token in `tokenizer_config.json`: a string or an AddedToken dict.
fn token_text(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(String::from),
        _ => None,
    }
}

/// What `tokenizer_config.json` (if any) says about tokenization and chat.
#[derive(Default)]
pub struct TokenizerConfig {
    pub chat_template: Option<String>,
    pub special_tokens: BTreeMap<String, String>,
    pub add_bos_token: Option<bool>,
}

impl TokenizerConfig {
    /// Reads `dir/tokenizer_config.json` and `dir/chat_template.jinja` (absent files: defaults).
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let mut out = Self::default();
        let path = dir.join("tokenizer_config.json");
        if path.is_file() {
            let v: serde_json::Value = serde_json::from_str(&read_text_file(&path)?)
                .map_err(|e| Error::Value(format!("{} is not valid JSON: {e}", path.display())))?;
            let obj = v
                .as_object()
                .ok_or_else(|| Error::Value(format!("{} must be a JSON object", path.display())))?;
            for key in ["bos_token", "eos_token", "unk_token", "pad_token"] {
                if let Some(t) = obj.get(key).and_then(token_text) {
                    out.special_tokens.insert(key.to_string(), t);
                }
            }
            out.add_bos_token = obj.get("add_bos_token").and_then(|b| b.as_bool());
            out.chat_template = match obj.get("chat_template") {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(s)) => Some(s.clone()),
                // A list of named templates: the one named "default" (as transformers picks).
                Some(serde_json::Value::Array(a)) => a
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template"))
                    .and_then(|t| t.as_str())
                    .map(String::from),
                Some(other) => {
                    return Err(Error::Value(format!(
                        "{}: 'chat_template' must be a string or a list of named templates, got {other}",
                        path.display()
                    )))
                }
            };
        }
        let jinja = dir.join("chat_template.jinja");
        if jinja.is_file() {
            out.chat_template = Some(read_text_file(&jinja)?);
        }
        Ok(out)
    }
}

/// `json.dumps(v, ensure_ascii=False, indent=indent)` of a template value.
fn write_json(v: &Value, indent: Option<usize>, depth: usize, out: &mut String) {
    let newline = |out: &mut String, d: usize| {
        if let Some(n) = indent {
            out.push('\n');
            out.push_str(&" ".repeat(n * d));
        }
    };
    let item_sep = if indent.is_some() { "," } else { ", " };
    match v.kind() {
        ValueKind::Undefined | ValueKind::None => out.push_str("null"),
        ValueKind::Bool => out.push_str(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => {
            let s = v.to_string();
            // Python writes floats with a fraction part (1.0) and non-finite ones by name.
            out.push_str(match s.as_str() {
                "inf" => "Infinity",
                "-inf" => "-Infinity",
                "nan" | "NaN" => "NaN",
                _ => &s,
            })
        }
        ValueKind::String => {
            out.push_str(&serde_json::to_string(v.as_str().unwrap_or("")).unwrap_or_default())
        }
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v.try_iter().map(|i| i.collect()).unwrap_or_default();
            if items.is_empty() {
                return out.push_str("[]");
            }
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                write_json(item, indent, depth + 1, out);
            }
            newline(out, depth);
            out.push(']');
        }
        ValueKind::Map => {
            let keys: Vec<Value> = v.try_iter().map(|i| i.collect()).unwrap_or_default();
            if keys.is_empty() {
                return out.push_str("{}");
            }
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                newline(out, depth + 1);
                let key = k
                    .as_str()
                    .map(String::from)
                    .unwrap_or_else(|| k.to_string());
                out.push_str(&serde_json::to_string(&key).unwrap_or_default());
                out.push_str(": ");
                write_json(&v.get_item(k).unwrap_or_default(), indent, depth + 1, out);
            }
            newline(out, depth);
            out.push('}');
        }
        _ => out.push_str(&serde_json::to_string(&v.to_string()).unwrap_or_default()),
    }
}

fn tojson(v: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<usize> = kwargs.get("indent")?;
    kwargs.assert_all_used()?;
    let mut s = String::new();
    write_json(&v, indent, 0, &mut s);
    Ok(Value::from_safe_string(s))
}

/// The local time formatted with a subset of `strftime` (`%d %m %Y %y %b %B %H %M %S %%`):
/// what templates ask `strftime_now` for (Llama 3.2's "26 Jul 2024").
fn strftime_now(fmt: String) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719468;
    let era = z.div_euclid(146097);
    let doe = z - era * 146097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('b') => out.push_str(&name[..3]),
            Some('B') => out.push_str(name),
            Some('H') => out.push_str(&format!("{:02}", rem / 3600)),
            Some('M') => out.push_str(&format!("{:02}", rem % 3600 / 60)),
            Some('S') => out.push_str(&format!("{:02}", rem % 60)),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

impl ChatTemplate {
    /// Compiles `source`; `special_tokens` (`bos_token` ...) are variables of every rendering.
    pub fn new(source: &str, special_tokens: BTreeMap<String, String>) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> std::result::Result<Value, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
            },
        );
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
        env.add_template_owned("chat_template", source.to_string())
            .map_err(|e| Error::Value(format!("the chat template does not compile: {e:#}")))?;
        Ok(Self {
            env,
            tokens: special_tokens,
        })
    }

    /// Renders `messages` (a JSON list of `{"role", "content", ...}`), with
    /// `add_generation_prompt` and any further template variables in `extra`.
    pub fn render(
        &self,
        messages: &serde_json::Value,
        add_generation_prompt: bool,
        extra: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        if !messages.is_array() {
            return Err(Error::Value(
                "messages must be a list of {'role', 'content'} dicts".into(),
            ));
        }
        let mut ctx: BTreeMap<String, Value> = self
            .tokens
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect();
        for (k, v) in extra {
            ctx.insert(k.clone(), Value::from_serialize(v));
        }
        ctx.insert("messages".into(), Value::from_serialize(messages));
        ctx.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        let tmpl = self
            .env
            .get_template("chat_template")
            .map_err(|e| Error::Internal(e.to_string()))?;
        tmpl.render(ctx).map_err(|e| {
            let detail = e
                .detail()
                .map(String::from)
                .unwrap_or_else(|| e.to_string());
            Error::Value(format!("chat template: {detail}"))
        })
    }
}
