//! A JSON document borrowed from a body, for comparing two of them cheaply: strings
//! without escapes point into the body, objects are vectors sorted by key once, numbers
//! keep their kind. Compared with a `serde_json::Value` tree this saves an allocation per
//! key and per string, which is most of the cost of a structural comparison.

use std::borrow::Cow;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};

#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    /// As serde_json keeps them: `1` and `1.0` are different values.
    U(u64),
    I(i64),
    F(f64),
    Str(Cow<'a, str>),
    Arr(Vec<Json<'a>>),
    /// Sorted by key; a repeated key keeps its last value, as serde_json does.
    Obj(Vec<(Cow<'a, str>, Json<'a>)>),
}

/// The document in `body`, or `None` if it is not JSON.
pub fn parse(body: &[u8]) -> Option<Json<'_>> {
    serde_json::from_slice(body).ok()
}

impl Json<'_> {
    /// The value as JSON text, cut after about `limit` bytes.
    pub fn text(&self, limit: usize) -> String {
        let mut out = String::new();
        self.write(&mut out, limit);
        out
    }

    fn write(&self, out: &mut String, limit: usize) {
        use fmt::Write;
        if out.len() > limit {
            return;
        }
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::U(n) => {
                let _ = write!(out, "{n}");
            }
            Json::I(n) => {
                let _ = write!(out, "{n}");
            }
            Json::F(n) => {
                out.push_str(&serde_json::Number::from_f64(*n).map_or("null".into(), |n| n.to_string()))
            }
            Json::Str(s) => out.push_str(&serde_json::to_string(s.as_ref()).unwrap_or_default()),
            Json::Arr(items) => {
                out.push('[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    v.write(out, limit);
                }
                out.push(']');
            }
            Json::Obj(fields) => {
                out.push('{');
                for (i, (k, v)) in fields.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str(&serde_json::to_string(k.as_ref()).unwrap_or_default());
                    out.push(':');
                    v.write(out, limit);
                }
                out.push('}');
            }
        }
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }

    fn visit_bool<E>(self, v: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Json<'de>, E> {
        Ok(Json::U(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Json<'de>, E> {
        Ok(Json::I(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Json<'de>, E> {
        Ok(Json::F(v))
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E>(self, v: &str) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Json<'de>, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Json::Arr(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut fields: Vec<(Cow<'de, str>, Json<'de>)> = Vec::new();
        while let Some((k, v)) = map.next_entry::<ObjectKey<'de>, Json<'de>>()? {
            fields.push((k.0, v));
        }
        // Stable: of repeated keys the last stays last, and is the one kept.
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        fields.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        Ok(Json::Obj(fields))
    }
}

impl<'de> Deserialize<'de> for Json<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Json<'de>, D::Error> {
        d.deserialize_any(JsonVisitor)
    }
}

/// An object key, borrowed when it has no escapes.
struct ObjectKey<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for ObjectKey<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ObjectKey<'de>, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = ObjectKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<ObjectKey<'de>, E> {
                Ok(ObjectKey(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<ObjectKey<'de>, E> {
                Ok(ObjectKey(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<ObjectKey<'de>, E> {
                Ok(ObjectKey(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_serde_json_and_writes_json_text() {
        let doc = br#"{"b":[1,-2,1.5,"x\"y",null,true],"a":{"z":1,"y":"plain"},"a":{"k":2}}"#;
        let j = parse(doc).unwrap();
        let Json::Obj(fields) = &j else { panic!() };
        assert_eq!(
            fields.iter().map(|(k, _)| k.as_ref()).collect::<Vec<_>>(),
            ["a", "b"],
            "sorted, last repeat kept"
        );
        assert!(
            matches!(&fields[1].1, Json::Arr(v) if matches!(v[3], Json::Str(Cow::Owned(_)))),
            "escaped: owned"
        );
        assert!(matches!(&fields[0].1, Json::Obj(v) if v.len() == 1), "the last \"a\"");
        let text = j.text(1000);
        let back: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(back, serde_json::json!({"a":{"k":2},"b":[1,-2,1.5,"x\"y",null,true]}));
        assert_ne!(parse(b"1").unwrap(), parse(b"1.0").unwrap());
        assert!(parse(b"{").is_none() && parse(b"").is_none());
        assert!(j.text(3).len() < text.len(), "cut early");
    }
}
