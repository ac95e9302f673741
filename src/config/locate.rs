//! Line and column of a node named by its path (`descriptors[2].rate_limit.window`).
//!
//! serde_norway keeps no spans, but it stamps an error raised while deserializing a node with the
//! mark of that node's first parser event. To place the semantic errors found after parsing, the
//! text goes once more through the same parser (libyaml, as serde_norway runs it, in `events`),
//! keeping each node's start mark in a flat tree, [`Positions`]. Each path then resolves by a walk
//! down that tree, so a file with `n` errors costs one parse plus `n` short walks, not `n` parses.
//!
//! The walk answers what serde_norway would stamp: the node itself, or with [`NodePath::key`] the
//! key naming the field; an alias stands for its anchored node; where the path stops existing
//! part-way (a missing field or index), the deepest node reached.

mod events;

use std::collections::HashMap;

use events::Event;

/// One step of a path from the document root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seg {
    Field(&'static str),
    Index(usize),
}

/// A node of the document: the value at `segs`, or with `at_key` the key naming its last field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct NodePath {
    pub segs: Vec<Seg>,
    pub at_key: bool,
}

impl NodePath {
    pub fn field(&self, name: &'static str) -> NodePath {
        let mut segs = self.segs.clone();
        segs.push(Seg::Field(name));
        NodePath {
            segs,
            at_key: false,
        }
    }

    pub fn index(&self, i: usize) -> NodePath {
        let mut segs = self.segs.clone();
        segs.push(Seg::Index(i));
        NodePath {
            segs,
            at_key: false,
        }
    }

    /// The key of this path's last field rather than its value.
    pub fn key(mut self) -> NodePath {
        self.at_key = true;
        self
    }
}

/// Every node's start mark, from one parse of a text.
#[derive(Debug, Default)]
pub(crate) struct Positions {
    nodes: Vec<Node>,
}

#[derive(Debug)]
struct Node {
    /// 1-based `(line, column)`, as serde_norway shows a mark.
    at: (usize, usize),
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Scalar(Box<[u8]>),
    /// `(key, value)` node ids, in file order.
    Map(Vec<(usize, usize)>),
    Seq(Vec<usize>),
}

/// A container being filled: its id, and for a mapping the key waiting for its value.
struct Open {
    id: usize,
    key: Option<usize>,
}

impl Positions {
    /// The node tree of `text`'s first document; empty if the text cannot be parsed.
    pub fn of(text: &str) -> Positions {
        let mut tree = Positions::default();
        let mut open: Vec<Open> = Vec::new();
        let mut anchors: HashMap<Box<[u8]>, usize> = HashMap::new();
        let mut parser = events::Parser::new(text);
        while let Some(event) = parser.next() {
            let (id, anchor, container) = match event {
                Event::Scalar { at, anchor, value } => {
                    (tree.push(at, Kind::Scalar(value)), anchor, false)
                }
                Event::MapStart { at, anchor } => {
                    (tree.push(at, Kind::Map(Vec::new())), anchor, true)
                }
                Event::SeqStart { at, anchor } => {
                    (tree.push(at, Kind::Seq(Vec::new())), anchor, true)
                }
                Event::Alias { at, anchor } => match anchors.get(&anchor) {
                    Some(&id) => (id, None, false),
                    None => (tree.push(at, Kind::Scalar(Box::default())), None, false),
                },
                Event::End => {
                    open.pop();
                    continue;
                }
                Event::DocumentEnd => return tree,
            };
            if let Some(name) = anchor {
                anchors.insert(name, id);
            }
            tree.attach(open.last_mut(), id);
            if container {
                open.push(Open { id, key: None });
            }
        }
        if parser.failed() {
            tree.nodes.clear();
        }
        tree
    }

    fn push(&mut self, at: (usize, usize), kind: Kind) -> usize {
        self.nodes.push(Node { at, kind });
        self.nodes.len() - 1
    }

    fn attach(&mut self, parent: Option<&mut Open>, id: usize) {
        let Some(parent) = parent else { return };
        match (&mut self.nodes[parent.id].kind, parent.key.take()) {
            (Kind::Map(entries), Some(key)) => entries.push((key, id)),
            (Kind::Map(_), None) => parent.key = Some(id),
            (Kind::Seq(items), _) => items.push(id),
            (Kind::Scalar(_), _) => {}
        }
    }

    /// 1-based `(line, column)` of `path`; `(1, 1)` if the text could not be parsed.
    pub fn locate(&self, path: &NodePath) -> (usize, usize) {
        let Some(mut node) = self.nodes.first() else {
            return (1, 1);
        };
        for (i, seg) in path.segs.iter().enumerate() {
            let last = i + 1 == path.segs.len();
            let next = match (&node.kind, *seg) {
                (Kind::Map(entries), Seg::Field(name)) => match self.field(entries, name) {
                    Ok((key, _)) if last && path.at_key => return key.at,
                    Ok((_, value)) => value,
                    Err(Some(odd_key)) => return odd_key.at,
                    Err(None) => return node.at,
                },
                (Kind::Seq(items), Seg::Index(i)) => match items.get(i) {
                    Some(&id) => &self.nodes[id],
                    None => return node.at,
                },
                _ => return node.at,
            };
            node = next;
        }
        node.at
    }

    /// The first entry whose key is `name`. serde_norway stops at a key that is no scalar (it
    /// cannot be a field name): that key is the error, `Err(Some(key))`; `Err(None)` if absent.
    fn field(
        &self,
        entries: &[(usize, usize)],
        name: &str,
    ) -> Result<(&Node, &Node), Option<&Node>> {
        for &(key, value) in entries {
            let key = &self.nodes[key];
            match &key.kind {
                Kind::Scalar(text) if **text == *name.as_bytes() => {
                    return Ok((key, &self.nodes[value]));
                }
                Kind::Scalar(_) => {}
                Kind::Map(_) | Kind::Seq(_) => return Err(Some(key)),
            }
        }
        Err(None)
    }
}

/// 1-based `(line, column)` of `path` in `text`, for a single lookup.
pub(crate) fn locate(text: &str, path: &NodePath) -> (usize, usize) {
    Positions::of(text).locate(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "domain: d\ndescriptors:\n  - key: a\n    rate_limit:\n      unit: second\n      window: 2s\n  - key: b\n    value: x\n";

    fn root() -> NodePath {
        NodePath::default()
    }

    #[test]
    fn finds_values_keys_and_list_items() {
        assert_eq!(locate(TEXT, &root().field("domain")), (1, 9));
        let d0 = root().field("descriptors").index(0);
        assert_eq!(locate(TEXT, &d0.field("key")), (3, 10));
        let rl = d0.field("rate_limit");
        assert_eq!(locate(TEXT, &rl), (5, 7));
        assert_eq!(locate(TEXT, &rl.field("window")), (6, 15));
        assert_eq!(locate(TEXT, &rl.field("window").key()), (6, 7));
        let d1 = root().field("descriptors").index(1);
        assert_eq!(locate(TEXT, &d1.field("value")), (8, 12));
    }

    #[test]
    fn aliases_stand_for_their_anchored_node_and_odd_keys_stop_the_walk() {
        let text = "a: &x\n  b: 1\nc: *x\n? [k]\n: 1\nd: 2\n";
        assert_eq!(locate(text, &root().field("c")), (1, 4));
        assert_eq!(locate(text, &root().field("c").field("b")), (2, 6));
        assert_eq!(locate(text, &root().field("d")), (4, 3));
        assert_eq!(locate("a: [1\n", &root().field("a")), (1, 1));
    }

    #[test]
    fn a_missing_node_reports_the_deepest_one_reached() {
        let d1 = root().field("descriptors").index(1);
        assert_eq!(locate(TEXT, &d1.field("rate_limit")), (7, 5));
        assert_eq!(locate(TEXT, &root().field("descriptors").index(9)), (3, 3));
    }
}
