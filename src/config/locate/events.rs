//! libyaml's parser events with their start marks: the one place tollgate calls libyaml itself.
//!
//! serde_norway runs the same parser (`unsafe-libyaml-norway`) but keeps its events private, so
//! this drives it directly to get the marks serde_norway stamps on errors. The parser reads the
//! borrowed text in place; each event is copied out (anchor, scalar value, mark) and freed at once.

use std::ffi::CStr;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use unsafe_libyaml_norway as unsafe_sys;

/// One node event, or the end of a container or of the first document.
#[derive(Debug)]
pub(super) enum Event {
    Scalar {
        at: (usize, usize),
        anchor: Option<Box<[u8]>>,
        value: Box<[u8]>,
    },
    MapStart {
        at: (usize, usize),
        anchor: Option<Box<[u8]>>,
    },
    SeqStart {
        at: (usize, usize),
        anchor: Option<Box<[u8]>>,
    },
    Alias {
        at: (usize, usize),
        anchor: Box<[u8]>,
    },
    End,
    DocumentEnd,
}

/// A libyaml parser over a borrowed text.
pub(super) struct Parser<'t> {
    /// Boxed: libyaml keeps pointers into its own state, so it must not move once initialized.
    sys: Box<MaybeUninit<unsafe_sys::yaml_parser_t>>,
    initialized: bool,
    failed: bool,
    ended: bool,
    text: PhantomData<&'t str>,
}

impl<'t> Parser<'t> {
    pub fn new(text: &'t str) -> Self {
        let mut sys = Box::new(MaybeUninit::<unsafe_sys::yaml_parser_t>::uninit());
        let parser = sys.as_mut_ptr();
        // SAFETY: `parser` points to writable memory for a `yaml_parser_t`, which
        // `yaml_parser_initialize` fills in whole; the input pointer stays valid for `'t`, which
        // outlives the parser, and libyaml only reads it.
        let initialized = unsafe {
            let ok = !unsafe_sys::yaml_parser_initialize(parser).fail;
            if ok {
                unsafe_sys::yaml_parser_set_encoding(parser, unsafe_sys::YAML_UTF8_ENCODING);
                unsafe_sys::yaml_parser_set_input_string(parser, text.as_ptr(), text.len() as u64);
            }
            ok
        };
        Self {
            sys,
            initialized,
            failed: !initialized,
            ended: false,
            text: PhantomData,
        }
    }

    /// Whether the text turned out not to be YAML (or libyaml could not start).
    pub fn failed(&self) -> bool {
        self.failed
    }

    /// The next node event; `None` at the end of the stream or on a parse error.
    pub fn next(&mut self) -> Option<Event> {
        loop {
            if self.failed || self.ended {
                return None;
            }
            let mut event = MaybeUninit::<unsafe_sys::yaml_event_t>::uninit();
            let parser = self.sys.as_mut_ptr();
            // SAFETY: the parser was initialized (checked above) and has not failed; on success
            // `yaml_parser_parse` fills `event`, which is read, copied out and deleted here.
            unsafe {
                if unsafe_sys::yaml_parser_parse(parser, event.as_mut_ptr()).fail {
                    self.failed = true;
                    return None;
                }
                let event = event.as_mut_ptr();
                let converted = convert(&*event);
                unsafe_sys::yaml_event_delete(event);
                match converted {
                    Some(Converted::Event(event)) => return Some(event),
                    Some(Converted::StreamEnd) => {
                        self.ended = true;
                        return None;
                    }
                    None => {}
                }
            }
        }
    }
}

impl Drop for Parser<'_> {
    fn drop(&mut self) {
        if self.initialized {
            // SAFETY: initialized in `new` and deleted only here.
            unsafe { unsafe_sys::yaml_parser_delete(self.sys.as_mut_ptr()) }
        }
    }
}

enum Converted {
    Event(Event),
    StreamEnd,
}

/// # Safety
/// `event` is one `yaml_parser_parse` filled and that is not yet deleted.
unsafe fn convert(event: &unsafe_sys::yaml_event_t) -> Option<Converted> {
    let mark = event.start_mark;
    let at = (mark.line as usize + 1, mark.column as usize + 1);
    // SAFETY (all blocks below): the union member read is the one `type_` says is set; libyaml's
    // anchors are NUL-terminated and scalar values `length` bytes long, both live until the event
    // is deleted, after this copy.
    let event = match event.type_ {
        unsafe_sys::YAML_SCALAR_EVENT => unsafe {
            let scalar = event.data.scalar;
            let value = if scalar.value.is_null() {
                Box::default()
            } else {
                Box::from(std::slice::from_raw_parts(
                    scalar.value,
                    scalar.length as usize,
                ))
            };
            Event::Scalar {
                at,
                anchor: anchor(scalar.anchor),
                value,
            }
        },
        unsafe_sys::YAML_MAPPING_START_EVENT => Event::MapStart {
            at,
            anchor: unsafe { anchor(event.data.mapping_start.anchor) },
        },
        unsafe_sys::YAML_SEQUENCE_START_EVENT => Event::SeqStart {
            at,
            anchor: unsafe { anchor(event.data.sequence_start.anchor) },
        },
        unsafe_sys::YAML_ALIAS_EVENT => Event::Alias {
            at,
            anchor: unsafe { anchor(event.data.alias.anchor) }.unwrap_or_default(),
        },
        unsafe_sys::YAML_MAPPING_END_EVENT | unsafe_sys::YAML_SEQUENCE_END_EVENT => Event::End,
        unsafe_sys::YAML_DOCUMENT_END_EVENT => Event::DocumentEnd,
        unsafe_sys::YAML_STREAM_END_EVENT => return Some(Converted::StreamEnd),
        _ => return None,
    };
    Some(Converted::Event(event))
}

/// # Safety
/// `name` is null or a NUL-terminated string alive for this call.
unsafe fn anchor(name: *const u8) -> Option<Box<[u8]>> {
    (!name.is_null()).then(|| Box::from(unsafe { CStr::from_ptr(name.cast()) }.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(text: &str) -> Vec<String> {
        let mut parser = Parser::new(text);
        std::iter::from_fn(|| parser.next())
            .map(|e| format!("{e:?}"))
            .collect()
    }

    #[test]
    fn reports_nodes_with_their_marks_and_document_ends() {
        let seen = events("a: &x [1]\nb: *x\n---\nc: 2\n");
        assert_eq!(seen.len(), 14, "{seen:?}");
        assert!(seen[0].starts_with("MapStart { at: (1, 1), anchor: None"));
        assert!(seen[2].starts_with("SeqStart { at: (1, 4), anchor: Some([120])"));
        assert!(seen[6].starts_with("Alias { at: (2, 4)"));
        assert_eq!(seen[8], "DocumentEnd");
    }

    #[test]
    fn stops_at_a_parse_error() {
        let mut parser = Parser::new("a: [1\n");
        assert_eq!(std::iter::from_fn(|| parser.next()).count(), 4);
        assert!(parser.failed());
        assert!(events("").is_empty());
    }
}
