//! A small, strict reader for the pickles of the CIFAR "python version".
//!
//! # The format
//!
//! A pickle is a program for a little stack machine. Each instruction is one
//! opcode byte, sometimes followed by an argument; running the program builds
//! the pickled object on a stack and `STOP` (`.`) returns the top of it. Three
//! pieces of state are enough:
//!
//! - the **stack** of values being built;
//! - the **mark stack**: `MARK` (`(`) remembers the stack height, and
//!   opcodes such as `TUPLE`, `APPENDS` or `SETITEMS` take every value pushed
//!   since the last mark;
//! - the **memo**, a table `index → value` filled by `BINPUT`/`MEMOIZE` and
//!   read back by `BINGET`, so one object can be referenced twice.
//!
//! The CIFAR batches were written by Python 2's `cPickle`, protocol 2: a dict
//! whose `data` entry is a numpy array. numpy pickles an array as a call,
//! `numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), b'b')`, that
//! makes an empty placeholder, followed by `BUILD` with the state
//! `(1, shape, dtype, fortran, raw_bytes)` that fills it. The dtype itself is
//! the call `numpy.dtype('u1', 0, 1)` plus a `BUILD` whose state only matters
//! for multi-byte types.
//!
//! # What this reader does and refuses
//!
//! It implements exactly the opcodes those files use, the few that Python 3
//! adds when a user re-pickles the same dict (protocols 2 to 4), and nothing
//! else. Pickles can name any Python function and ask for it to be called
//! (`GLOBAL` + `REDUCE`); this reader never imports or calls anything. It
//! recognises four names from an allow-list ([`Global`]) and interprets them
//! itself; any other name is an error that says which one. Protocol 5, whose
//! arrays travel as out-of-band or `BYTEARRAY8` buffers through
//! `numpy.core.numeric._frombuffer`, is refused with a clear message.
//!
//! Byte strings are kept as [`Span`]s, ranges into the input buffer, so the
//! 30 MB of pixels of a batch are never copied while parsing. The one
//! exception is Python 3's protocol-2 encoding of `bytes`, which goes through
//! `_codecs.encode(text, 'latin1')`: decoding that text necessarily makes a
//! new buffer.
//!
//! Every read is bounds-checked, and malformed input of any kind (truncated,
//! negative lengths, stack underflow, missing mark, unknown memo index) gives
//! a [`PickleError`] naming the opcode and its byte offset, never a panic.

use std::collections::HashMap;
use std::fmt;

/// A byte range `[start, start + len)` of the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub len: usize,
}

impl Span {
    /// The bytes this span covers in `input`.
    pub fn of<'a>(&self, input: &'a [u8]) -> &'a [u8] {
        &input[self.start..self.start + self.len]
    }
}

/// Index of an [`Object`] in [`Pickle::objects`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjId(pub usize);

/// A value on the stack or in the memo.
///
/// Scalars and input-backed strings are stored inline. Everything that can be
/// mutated after it is created (lists, dicts, the array placeholder that
/// `BUILD` fills) or that is large and owned lives in the object arena and is
/// referred to by index. That gives the sharing semantics of Python (a list
/// memoized and then appended to is the same list when fetched back) without
/// reference counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    /// A Python 2 `str` or Python 3 `bytes`, inside the input.
    Bytes(Span),
    /// A Python 3 `str` (unicode), inside the input, checked to be UTF-8.
    Str(Span),
    /// An object of the arena.
    Obj(ObjId),
}

/// A heap object built by the pickle program.
#[derive(Debug, Clone, PartialEq)]
pub enum Object {
    List(Vec<Value>),
    Tuple(Vec<Value>),
    /// Entries in insertion order (a CIFAR dict has four or five keys, so a
    /// linear scan beats hashing).
    Dict(Vec<(Value, Value)>),
    /// Bytes that had to be decoded (`_codecs.encode`), so not in the input.
    OwnedBytes(Vec<u8>),
    /// One of the allow-listed callables, not yet called.
    Global(Global),
    /// A numpy dtype; only its name is kept (`u1` for CIFAR).
    Dtype(Dtype),
    /// A numpy array: a placeholder after `_reconstruct`, complete after
    /// `BUILD`.
    Array(Array),
}

/// The allow-list of global names a pickle may refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Global {
    /// `numpy.core.multiarray._reconstruct` (numpy 1) or
    /// `numpy._core.multiarray._reconstruct` (numpy 2).
    Reconstruct,
    /// `numpy.ndarray`, the first argument of `_reconstruct`.
    Ndarray,
    /// `numpy.dtype`.
    Dtype,
    /// `_codecs.encode`, Python 3's way of pickling `bytes` at protocol 2.
    CodecsEncode,
}

impl Global {
    /// Looks `module.name` up in the allow-list.
    fn lookup(module: &[u8], name: &[u8]) -> Option<Global> {
        match (module, name) {
            (b"numpy.core.multiarray" | b"numpy._core.multiarray", b"_reconstruct") => {
                Some(Global::Reconstruct)
            }
            (b"numpy", b"ndarray") => Some(Global::Ndarray),
            (b"numpy", b"dtype") => Some(Global::Dtype),
            (b"_codecs", b"encode") => Some(Global::CodecsEncode),
            _ => None,
        }
    }
}

/// A numpy dtype, as far as this reader cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dtype {
    /// The type string given to `numpy.dtype`, e.g. `u1`.
    pub name: String,
}

/// A numpy array, filled in by `BUILD`.
#[derive(Debug, Clone, PartialEq)]
pub struct Array {
    /// Dimensions, e.g. `[10000, 3072]`. Empty until `BUILD`.
    pub shape: Vec<usize>,
    /// Element type; `None` until `BUILD`.
    pub dtype: Option<Dtype>,
    /// True if the data is stored column-major.
    pub fortran: bool,
    /// The raw element bytes: a [`Value::Bytes`] span or an owned-bytes
    /// object. `None` until `BUILD`.
    pub data: Option<Value>,
}

/// What went wrong, and where in the pickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickleError {
    /// Byte offset of the opcode being executed.
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for PickleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pickle byte {}: {}", self.offset, self.message)
    }
}

impl std::error::Error for PickleError {}

type Result<T> = std::result::Result<T, PickleError>;

/// A parsed pickle: the object arena and the root value, borrowing the input
/// for every byte string.
#[derive(Debug)]
pub struct Pickle<'a> {
    pub input: &'a [u8],
    pub objects: Vec<Object>,
    pub root: Value,
}

impl<'a> Pickle<'a> {
    /// The object `id` refers to.
    pub fn object(&self, id: ObjId) -> &Object {
        &self.objects[id.0]
    }

    /// The bytes of a byte string (`Bytes` span or owned bytes), if `v` is one.
    pub fn bytes(&self, v: Value) -> Option<&[u8]> {
        match v {
            Value::Bytes(s) => Some(s.of(self.input)),
            Value::Obj(id) => match self.object(id) {
                Object::OwnedBytes(b) => Some(b),
                _ => None,
            },
            _ => None,
        }
    }

    /// The text of a string, whether pickled as bytes (Python 2 `str`) or as
    /// unicode (Python 3 `str`). `None` for bytes that are not UTF-8.
    pub fn text(&self, v: Value) -> Option<&str> {
        match v {
            Value::Str(s) => std::str::from_utf8(s.of(self.input)).ok(),
            _ => std::str::from_utf8(self.bytes(v)?).ok(),
        }
    }

    /// The items of a list or tuple.
    pub fn items(&self, v: Value) -> Option<&[Value]> {
        match v {
            Value::Obj(id) => match self.object(id) {
                Object::List(items) | Object::Tuple(items) => Some(items),
                _ => None,
            },
            _ => None,
        }
    }

    /// The entries of a dict.
    pub fn dict(&self, v: Value) -> Option<&[(Value, Value)]> {
        match v {
            Value::Obj(id) => match self.object(id) {
                Object::Dict(entries) => Some(entries),
                _ => None,
            },
            _ => None,
        }
    }

    /// The value of `key` in dict `v`, the key being either bytes or text
    /// (Python 2 files have byte keys; a Python 3 re-pickle may have either).
    pub fn get(&self, v: Value, key: &str) -> Option<Value> {
        self.dict(v)?
            .iter()
            .find(|(k, _)| self.text(*k) == Some(key))
            .map(|(_, value)| *value)
    }

    /// The array `v` refers to.
    pub fn array(&self, v: Value) -> Option<&Array> {
        match v {
            Value::Obj(id) => match self.object(id) {
                Object::Array(a) => Some(a),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Runs the pickle program in `input` and returns the object it builds.
pub fn parse(input: &[u8]) -> Result<Pickle<'_>> {
    Machine::new(input).run()
}

// Opcodes, named as in CPython's `pickletools`.
const PROTO: u8 = 0x80;
const FRAME: u8 = 0x95;
const STOP: u8 = b'.';
const MARK: u8 = b'(';
const NONE: u8 = b'N';
const NEWTRUE: u8 = 0x88;
const NEWFALSE: u8 = 0x89;
const BININT: u8 = b'J';
const BININT1: u8 = b'K';
const BININT2: u8 = b'M';
const SHORT_BINSTRING: u8 = b'U';
const BINSTRING: u8 = b'T';
const SHORT_BINBYTES: u8 = b'C';
const BINBYTES: u8 = b'B';
const BINBYTES8: u8 = 0x8e;
const BINUNICODE: u8 = b'X';
const SHORT_BINUNICODE: u8 = 0x8c;
const EMPTY_DICT: u8 = b'}';
const EMPTY_LIST: u8 = b']';
const EMPTY_TUPLE: u8 = b')';
const TUPLE: u8 = b't';
const TUPLE1: u8 = 0x85;
const TUPLE2: u8 = 0x86;
const TUPLE3: u8 = 0x87;
const APPEND: u8 = b'a';
const APPENDS: u8 = b'e';
const SETITEM: u8 = b's';
const SETITEMS: u8 = b'u';
const BINPUT: u8 = b'q';
const LONG_BINPUT: u8 = b'r';
const MEMOIZE: u8 = 0x94;
const BINGET: u8 = b'h';
const LONG_BINGET: u8 = b'j';
const GLOBAL: u8 = b'c';
const STACK_GLOBAL: u8 = 0x93;
const REDUCE: u8 = b'R';
const BUILD: u8 = b'b';
const BYTEARRAY8: u8 = 0x96;

/// The highest protocol understood. Protocol 5 only adds out-of-band
/// buffers, which numpy uses for arrays: see the module docs.
const MAX_PROTOCOL: u8 = 4;

/// The interpreter state.
struct Machine<'a> {
    /// The input and the objects built so far.
    doc: Pickle<'a>,
    /// Read position.
    pos: usize,
    /// Offset of the opcode being executed, for error messages.
    op_start: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
}

impl<'a> Machine<'a> {
    fn new(input: &'a [u8]) -> Self {
        Machine {
            doc: Pickle {
                input,
                objects: Vec::new(),
                root: Value::None,
            },
            pos: 0,
            op_start: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
        }
    }

    fn err<T>(&self, message: impl Into<String>) -> Result<T> {
        Err(PickleError {
            offset: self.op_start,
            message: message.into(),
        })
    }

    // ---- reading the argument bytes -------------------------------------

    /// The next `n` bytes as a span, or an error if the input is shorter.
    fn take(&mut self, n: usize, what: &str) -> Result<Span> {
        let left = self.doc.input.len() - self.pos;
        if n > left {
            return self.err(format!(
                "truncated: {what} needs {n} bytes, only {left} left in the input"
            ));
        }
        let span = Span {
            start: self.pos,
            len: n,
        };
        self.pos += n;
        Ok(span)
    }

    /// The next `N` bytes as an array, for little-endian integers.
    fn fixed<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let span = self.take(N, what)?;
        Ok(span
            .of(self.doc.input)
            .try_into()
            .expect("span has N bytes"))
    }

    fn read_u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.fixed::<1>(what)?[0])
    }

    fn read_u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.fixed(what)?))
    }

    fn read_u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.fixed(what)?))
    }

    /// A `\n`-terminated line (without the newline), as `GLOBAL` uses.
    fn read_line(&mut self, what: &str) -> Result<&'a [u8]> {
        let rest = &self.doc.input[self.pos..];
        match rest.iter().position(|&b| b == b'\n') {
            Some(n) => {
                self.pos += n + 1;
                Ok(&rest[..n])
            }
            None => self.err(format!("truncated: {what} has no terminating newline")),
        }
    }

    /// A length-prefixed string whose length came from the input: checks it
    /// fits in memory and in what is left.
    fn take_len(&mut self, len: u64, what: &str) -> Result<Span> {
        match usize::try_from(len) {
            Ok(n) => self.take(n, what),
            Err(_) => self.err(format!("{what} length {len} does not fit in memory")),
        }
    }

    /// A UTF-8 text span (the unicode opcodes).
    fn take_text(&mut self, len: u64, what: &str) -> Result<Value> {
        let span = self.take_len(len, what)?;
        if std::str::from_utf8(span.of(self.doc.input)).is_err() {
            return self.err(format!("{what} is not valid UTF-8"));
        }
        Ok(Value::Str(span))
    }

    // ---- the stacks and the memo ----------------------------------------

    fn push(&mut self, v: Value) {
        self.stack.push(v);
    }

    fn push_object(&mut self, obj: Object) {
        self.doc.objects.push(obj);
        let id = ObjId(self.doc.objects.len() - 1);
        self.push(Value::Obj(id));
    }

    fn pop(&mut self, op: &str) -> Result<Value> {
        match self.stack.pop() {
            Some(v) => Ok(v),
            None => self.err(format!("stack underflow in {op}")),
        }
    }

    fn top(&self, op: &str) -> Result<Value> {
        match self.stack.last() {
            Some(&v) => Ok(v),
            None => self.err(format!("stack underflow in {op}")),
        }
    }

    /// Everything pushed since the last `MARK`, removing the mark.
    fn pop_mark(&mut self, op: &str) -> Result<Vec<Value>> {
        let Some(height) = self.marks.pop() else {
            return self.err(format!("{op} without a MARK"));
        };
        if height > self.stack.len() {
            // The stack was popped below the mark by some other opcode.
            return self.err(format!("{op}: stack popped below its MARK"));
        }
        Ok(self.stack.split_off(height))
    }

    fn memo_put(&mut self, index: u32, op: &str) -> Result<()> {
        let v = self.top(op)?;
        self.memo.insert(index, v);
        Ok(())
    }

    fn memo_get(&mut self, index: u32, op: &str) -> Result<()> {
        match self.memo.get(&index) {
            Some(&v) => {
                self.push(v);
                Ok(())
            }
            None => self.err(format!(
                "{op} of memo index {index}, which was never stored"
            )),
        }
    }

    /// The object arena slot of the value on top of the stack, for the
    /// opcodes that mutate it (APPENDS, SETITEMS, BUILD).
    fn top_object(&mut self, op: &str) -> Result<&mut Object> {
        match self.top(op)? {
            Value::Obj(id) => Ok(&mut self.doc.objects[id.0]),
            other => self.err(format!("{op} on {other:?}, not a container")),
        }
    }

    // ---- the main loop --------------------------------------------------

    fn run(mut self) -> Result<Pickle<'a>> {
        loop {
            self.op_start = self.pos;
            if self.pos == self.doc.input.len() {
                return self.err("truncated: the input ends before STOP");
            }
            let op = self.doc.input[self.pos];
            self.pos += 1;
            match op {
                PROTO => {
                    let version = self.read_u8("PROTO")?;
                    if version > MAX_PROTOCOL {
                        return self.err(format!(
                            "unsupported pickle protocol {version} (this reader handles \
                             protocols 2 to {MAX_PROTOCOL}; re-pickle with protocol 4 or lower)"
                        ));
                    }
                }
                // The frame length is only a read-ahead hint.
                FRAME => {
                    self.read_u64("FRAME")?;
                }
                STOP => {
                    let root = self.pop("STOP")?;
                    if self.pos != self.doc.input.len() {
                        return self.err(format!(
                            "{} unexpected bytes after STOP",
                            self.doc.input.len() - self.pos
                        ));
                    }
                    self.doc.root = root;
                    return Ok(self.doc);
                }
                MARK => self.marks.push(self.stack.len()),
                NONE => self.push(Value::None),
                NEWTRUE => self.push(Value::Bool(true)),
                NEWFALSE => self.push(Value::Bool(false)),
                BININT1 => {
                    let v = self.read_u8("BININT1")?;
                    self.push(Value::Int(v.into()));
                }
                BININT2 => {
                    let v = u16::from_le_bytes(self.fixed("BININT2")?);
                    self.push(Value::Int(v.into()));
                }
                BININT => {
                    let v = i32::from_le_bytes(self.fixed("BININT")?);
                    self.push(Value::Int(v.into()));
                }
                SHORT_BINSTRING | SHORT_BINBYTES => {
                    let name = if op == SHORT_BINSTRING {
                        "SHORT_BINSTRING"
                    } else {
                        "SHORT_BINBYTES"
                    };
                    let len = self.read_u8(name)?;
                    let span = self.take(len.into(), name)?;
                    self.push(Value::Bytes(span));
                }
                BINSTRING => {
                    // A signed length: cPickle never writes a negative one,
                    // so one means a corrupt file.
                    let len = i32::from_le_bytes(self.fixed("BINSTRING")?);
                    if len < 0 {
                        return self.err(format!("BINSTRING with negative length {len}"));
                    }
                    let span = self.take_len(len as u64, "BINSTRING")?;
                    self.push(Value::Bytes(span));
                }
                BINBYTES => {
                    let len = self.read_u32("BINBYTES")?;
                    let span = self.take_len(len.into(), "BINBYTES")?;
                    self.push(Value::Bytes(span));
                }
                BINBYTES8 => {
                    let len = self.read_u64("BINBYTES8")?;
                    let span = self.take_len(len, "BINBYTES8")?;
                    self.push(Value::Bytes(span));
                }
                BINUNICODE => {
                    let len = self.read_u32("BINUNICODE")?;
                    let v = self.take_text(len.into(), "BINUNICODE")?;
                    self.push(v);
                }
                SHORT_BINUNICODE => {
                    let len = self.read_u8("SHORT_BINUNICODE")?;
                    let v = self.take_text(len.into(), "SHORT_BINUNICODE")?;
                    self.push(v);
                }
                EMPTY_DICT => self.push_object(Object::Dict(Vec::new())),
                EMPTY_LIST => self.push_object(Object::List(Vec::new())),
                EMPTY_TUPLE => self.push_object(Object::Tuple(Vec::new())),
                TUPLE => {
                    let items = self.pop_mark("TUPLE")?;
                    self.push_object(Object::Tuple(items));
                }
                TUPLE1 | TUPLE2 | TUPLE3 => {
                    let n = usize::from(op - TUPLE1 + 1);
                    let name = ["TUPLE1", "TUPLE2", "TUPLE3"][n - 1];
                    if self.stack.len() < n {
                        return self.err(format!("stack underflow in {name}"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push_object(Object::Tuple(items));
                }
                APPEND => {
                    let item = self.pop("APPEND")?;
                    self.append(vec![item], "APPEND")?;
                }
                APPENDS => {
                    let items = self.pop_mark("APPENDS")?;
                    self.append(items, "APPENDS")?;
                }
                SETITEM => {
                    let value = self.pop("SETITEM")?;
                    let key = self.pop("SETITEM")?;
                    self.set_items(vec![key, value], "SETITEM")?;
                }
                SETITEMS => {
                    let items = self.pop_mark("SETITEMS")?;
                    self.set_items(items, "SETITEMS")?;
                }
                BINPUT => {
                    let i = self.read_u8("BINPUT")?;
                    self.memo_put(i.into(), "BINPUT")?;
                }
                LONG_BINPUT => {
                    let i = self.read_u32("LONG_BINPUT")?;
                    self.memo_put(i, "LONG_BINPUT")?;
                }
                MEMOIZE => {
                    // The next free index, as Python's `len(memo)`.
                    let Ok(i) = u32::try_from(self.memo.len()) else {
                        return self.err("MEMOIZE: the memo is full (2^32 entries)");
                    };
                    self.memo_put(i, "MEMOIZE")?;
                }
                BINGET => {
                    let i = self.read_u8("BINGET")?;
                    self.memo_get(i.into(), "BINGET")?;
                }
                LONG_BINGET => {
                    let i = self.read_u32("LONG_BINGET")?;
                    self.memo_get(i, "LONG_BINGET")?;
                }
                GLOBAL => {
                    let module = self.read_line("GLOBAL module name")?;
                    let name = self.read_line("GLOBAL name")?;
                    self.global(module, name)?;
                }
                STACK_GLOBAL => {
                    let name = self.pop("STACK_GLOBAL")?;
                    let module = self.pop("STACK_GLOBAL")?;
                    match (module, name) {
                        (Value::Str(m), Value::Str(n)) => {
                            self.global(m.of(self.doc.input), n.of(self.doc.input))?
                        }
                        _ => return self.err("STACK_GLOBAL needs two strings"),
                    }
                }
                REDUCE => self.reduce()?,
                BUILD => self.build()?,
                BYTEARRAY8 => {
                    return self.err(
                        "unsupported opcode 0x96 (BYTEARRAY8, pickle protocol 5); \
                         re-pickle with protocol 4 or lower",
                    )
                }
                _ => return self.err(format!("unsupported opcode 0x{op:02x} ({})", printable(op))),
            }
        }
    }

    fn append(&mut self, items: Vec<Value>, op: &str) -> Result<()> {
        match self.top_object(op)? {
            Object::List(list) => {
                list.extend(items);
                Ok(())
            }
            other => {
                let kind = kind_of(other);
                self.err(format!("{op} on a {kind}, not a list"))
            }
        }
    }

    fn set_items(&mut self, items: Vec<Value>, op: &str) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return self.err(format!(
                "{op} with an odd number of items ({})",
                items.len()
            ));
        }
        match self.top_object(op)? {
            Object::Dict(dict) => {
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    dict.push((k, v));
                }
                Ok(())
            }
            other => {
                let kind = kind_of(other);
                self.err(format!("{op} on a {kind}, not a dict"))
            }
        }
    }

    /// `GLOBAL` / `STACK_GLOBAL`: pushes an allow-listed callable.
    fn global(&mut self, module: &[u8], name: &[u8]) -> Result<()> {
        match Global::lookup(module, name) {
            Some(g) => {
                self.push_object(Object::Global(g));
                Ok(())
            }
            None => self.err(format!(
                "forbidden global {}.{} (only numpy array reconstruction and \
                 _codecs.encode are allowed)",
                String::from_utf8_lossy(module),
                String::from_utf8_lossy(name)
            )),
        }
    }

    /// `REDUCE`: `callable(*args)`, for the allow-listed callables only,
    /// interpreted here rather than called.
    fn reduce(&mut self) -> Result<()> {
        let args = self.pop("REDUCE")?;
        let func = self.pop("REDUCE")?;
        let global = match func {
            Value::Obj(id) => match &self.doc.objects[id.0] {
                Object::Global(g) => *g,
                other => return self.err(format!("REDUCE on a {}", kind_of(other))),
            },
            other => return self.err(format!("REDUCE on {other:?}")),
        };
        // Every allowed callable takes at most three arguments: copy only
        // the head of the tuple and its length, so that one large memoised
        // tuple passed to REDUCE again and again costs nothing per call.
        let (nargs, args) = match args {
            Value::Obj(id) => match &self.doc.objects[id.0] {
                Object::Tuple(items) => (items.len(), head(items)),
                other => return self.err(format!("REDUCE arguments are a {}", kind_of(other))),
            },
            other => return self.err(format!("REDUCE arguments are {other:?}")),
        };
        match global {
            Global::Reconstruct => {
                // _reconstruct(ndarray, (0,), b'b'): an empty placeholder.
                // The shape and type code are overwritten by BUILD.
                if nargs != 3 || !self.is_global(args[0], Global::Ndarray) {
                    return self.err("_reconstruct expects (numpy.ndarray, shape, typecode)");
                }
                self.push_object(Object::Array(Array {
                    shape: Vec::new(),
                    dtype: None,
                    fortran: false,
                    data: None,
                }));
            }
            Global::Dtype => {
                // dtype('u1', align, copy): only the type string matters.
                let name = match args.first().and_then(|&v| self.doc.text(v)) {
                    Some(name) => name.to_string(),
                    None => return self.err("numpy.dtype expects a type string"),
                };
                self.push_object(Object::Dtype(Dtype { name }));
            }
            Global::CodecsEncode => {
                // encode(text, 'latin1'): each code point below 256 is one byte.
                let (text, encoding) = match args[..] {
                    [Value::Str(t), e] if nargs == 2 => (t, self.doc.text(e)),
                    _ => return self.err("_codecs.encode expects (text, encoding)"),
                };
                if !matches!(encoding, Some("latin1" | "latin-1")) {
                    return self.err(format!(
                        "_codecs.encode with encoding {encoding:?}, only latin1 is supported"
                    ));
                }
                let text = std::str::from_utf8(text.of(self.doc.input)).expect("checked when read");
                let mut bytes = Vec::with_capacity(text.len());
                for ch in text.chars() {
                    match u8::try_from(u32::from(ch)) {
                        Ok(b) => bytes.push(b),
                        Err(_) => {
                            return self.err(format!(
                                "_codecs.encode: U+{:04X} is not a latin1 character",
                                u32::from(ch)
                            ))
                        }
                    }
                }
                self.push_object(Object::OwnedBytes(bytes));
            }
            Global::Ndarray => return self.err("numpy.ndarray cannot be called directly"),
        }
        Ok(())
    }

    /// `BUILD`: sets the state of the object below the state. Only numpy
    /// dtypes and arrays have a state here.
    fn build(&mut self) -> Result<()> {
        let state = self.pop("BUILD")?;
        let target = match self.top("BUILD")? {
            Value::Obj(id) => id,
            other => return self.err(format!("BUILD on {other:?}")),
        };
        // As in REDUCE, only the head of the state is copied.
        let Some((nstate, state)) = self.doc.items(state).map(|s| (s.len(), head(s))) else {
            return self.err("BUILD state is not a tuple");
        };
        match &self.doc.objects[target.0] {
            Object::Dtype(_) => {
                // (3, byteorder, subarray, names, fields, elsize, alignment,
                // flags): nothing to keep for a one-byte type, but the byte
                // order must be one numpy writes for it.
                let order = state.get(1).and_then(|&v| self.doc.text(v));
                if !matches!(order, Some("|" | "<")) {
                    return self.err(format!(
                        "dtype state with byte order {order:?}, expected '|' or '<'"
                    ));
                }
                Ok(())
            }
            Object::Array(_) => {
                // Version 1: (1, shape, dtype, fortran, data);
                // version 0 (old numpy): (shape, dtype, fortran, data).
                let fields = match nstate {
                    5 if state[0] == Value::Int(1) => &state[1..],
                    4 => &state[..],
                    n => return self.err(format!("ndarray state with {n} items")),
                };
                let Some(dims) = self.doc.items(fields[0]) else {
                    return self.err("ndarray shape is not a tuple");
                };
                let mut shape = Vec::with_capacity(dims.len());
                for &d in dims {
                    match d {
                        Value::Int(n) if n >= 0 => shape.push(n as usize),
                        other => return self.err(format!("ndarray dimension {other:?}")),
                    }
                }
                let dtype = match fields[1] {
                    Value::Obj(id) => match &self.doc.objects[id.0] {
                        Object::Dtype(d) => d.clone(),
                        _ => return self.err("ndarray dtype is not a numpy.dtype"),
                    },
                    _ => return self.err("ndarray dtype is not a numpy.dtype"),
                };
                let fortran = match fields[2] {
                    Value::Bool(b) => b,
                    Value::Int(i) => i != 0,
                    other => return self.err(format!("ndarray fortran flag {other:?}")),
                };
                let data = fields[3];
                if self.doc.bytes(data).is_none() {
                    return self.err("ndarray data is not a byte string");
                }
                self.doc.objects[target.0] = Object::Array(Array {
                    shape,
                    dtype: Some(dtype),
                    fortran,
                    data: Some(data),
                });
                Ok(())
            }
            other => self.err(format!("BUILD on a {}", kind_of(other))),
        }
    }

    fn is_global(&self, v: Value, g: Global) -> bool {
        matches!(v, Value::Obj(id) if self.doc.objects[id.0] == Object::Global(g))
    }
}

/// The first (at most five) items of a tuple: all that REDUCE and BUILD
/// ever read of their arguments.
fn head(items: &[Value]) -> Vec<Value> {
    items[..items.len().min(5)].to_vec()
}

/// A word for an object's type, for error messages.
fn kind_of(obj: &Object) -> &'static str {
    match obj {
        Object::List(_) => "list",
        Object::Tuple(_) => "tuple",
        Object::Dict(_) => "dict",
        Object::OwnedBytes(_) => "bytes",
        Object::Global(_) => "global",
        Object::Dtype(_) => "dtype",
        Object::Array(_) => "ndarray",
    }
}

/// An opcode byte as a character when it is printable, for error messages.
fn printable(op: u8) -> String {
    if op.is_ascii_graphic() {
        format!("'{}'", op as char)
    } else {
        "not a known opcode".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `bytes` and returns the error message, which must exist.
    fn error(bytes: &[u8]) -> PickleError {
        parse(bytes).expect_err("the pickle should be refused")
    }

    /// An array pickled as Python 2's cPickle writes the CIFAR `data` entry,
    /// shrunk to shape (1, 2) with the two bytes 7 and 9.
    fn tiny_array() -> Vec<u8> {
        let mut p = b"\x80\x02".to_vec();
        p.extend(b"cnumpy.core.multiarray\n_reconstruct\nq\x01");
        p.extend(b"cnumpy\nndarray\nq\x02K\x00\x85U\x01b\x87Rq\x03");
        p.extend(b"(K\x01K\x01K\x02\x86");
        p.extend(b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R");
        p.extend(b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb");
        p.extend(b"\x89T\x02\x00\x00\x00\x07\x09tb.");
        p
    }

    #[test]
    fn reads_an_array_without_copying_its_bytes() {
        let input = tiny_array();
        let doc = parse(&input).unwrap();
        let array = doc.array(doc.root).unwrap();
        assert_eq!(array.shape, vec![1, 2]);
        assert_eq!(array.dtype.as_ref().unwrap().name, "u1");
        assert!(!array.fortran);
        let data = array.data.unwrap();
        assert_eq!(doc.bytes(data), Some(&[7u8, 9][..]));
        // The data is a span of the input, ending before `t`, `b` and `.`.
        let Value::Bytes(span) = data else {
            panic!("expected a span, got {data:?}")
        };
        assert_eq!(span.start, input.len() - 5);
    }

    #[test]
    fn dict_list_and_memo_share_objects() {
        // {b'k': [1, 2, 300]} where the list is memoized, then filled, then
        // fetched back with BINGET: the fetched list must see the items.
        let p = b"\x80\x02}q\x01(U\x01k]q\x02(K\x01K\x02M\x2c\x01eU\x01jh\x02u.";
        let doc = parse(p).unwrap();
        let list = doc.get(doc.root, "k").unwrap();
        assert_eq!(
            doc.items(list).unwrap(),
            &[Value::Int(1), Value::Int(2), Value::Int(300)]
        );
        assert_eq!(doc.get(doc.root, "j"), Some(list));
        assert_eq!(doc.get(doc.root, "missing"), None);
    }

    #[test]
    fn codecs_encode_decodes_latin1() {
        // _codecs.encode('\u00ff\u0000A', 'latin1') with the text as UTF-8.
        let p = b"\x80\x02c_codecs\nencode\nX\x04\x00\x00\x00\xc3\xbf\x00AX\x06\x00\x00\x00latin1\x86R.";
        let doc = parse(p).unwrap();
        assert_eq!(doc.bytes(doc.root), Some(&[0xff, 0x00, b'A'][..]));
    }

    #[test]
    fn codecs_encode_refuses_wide_characters() {
        let p = b"\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00\xc4\x80X\x06\x00\x00\x00latin1\x86R.";
        assert!(error(p)
            .message
            .contains("U+0100 is not a latin1 character"));
    }

    #[test]
    fn protocol4_opcodes() {
        // FRAME, SHORT_BINUNICODE, MEMOIZE, BINBYTES8, NEWTRUE, EMPTY_TUPLE.
        let mut p = b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00".to_vec();
        p.extend(b"}\x94(\x8c\x01a\x94\x8e\x03\x00\x00\x00\x00\x00\x00\x00xyz");
        p.extend(b"\x8c\x01b\x88u\x8c\x01ch\x01s\x8c\x01d)s.");
        let doc = parse(&p).unwrap();
        assert_eq!(
            doc.bytes(doc.get(doc.root, "a").unwrap()),
            Some(&b"xyz"[..])
        );
        assert_eq!(doc.get(doc.root, "b"), Some(Value::Bool(true)));
        // MEMOIZE numbered the dict 0 and 'a' 1; SETITEM stored c -> 'a'.
        let c = doc.get(doc.root, "c").unwrap();
        assert_eq!(doc.text(c), Some("a"));
        assert_eq!(doc.items(doc.get(doc.root, "d").unwrap()), Some(&[][..]));
    }

    #[test]
    fn refuses_protocol_5() {
        let e = error(b"\x80\x05}.");
        assert_eq!(e.offset, 0);
        assert!(e.message.contains("unsupported pickle protocol 5"), "{e}");
        let e = error(b"\x80\x04\x96\x01\x00\x00\x00\x00\x00\x00\x00x.");
        assert!(
            e.message.contains("unsupported opcode 0x96 (BYTEARRAY8"),
            "{e}"
        );
    }

    #[test]
    fn refuses_unknown_opcodes_with_their_offset() {
        // 'I' (INT, protocol 0) is not implemented.
        let e = error(b"\x80\x02I1\n.");
        assert_eq!(
            e.to_string(),
            "pickle byte 2: unsupported opcode 0x49 ('I')"
        );
    }

    #[test]
    fn refuses_forbidden_globals() {
        let e = error(b"\x80\x02cos\nsystem\nU\x02ls\x85R.");
        assert_eq!(e.offset, 2);
        assert!(e.message.starts_with("forbidden global os.system"), "{e}");
        let e = error(b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93.");
        assert!(
            e.message.starts_with("forbidden global builtins.eval"),
            "{e}"
        );
    }

    #[test]
    fn truncated_inputs() {
        let full = tiny_array();
        for cut in 0..full.len() {
            let e = error(&full[..cut]);
            assert!(e.message.contains("truncated"), "cut at {cut}: {e}");
        }
        assert!(error(b"").message.contains("ends before STOP"));
    }

    #[test]
    fn binstring_lengths() {
        let e = error(b"\x80\x02T\xfb\xff\xff\xff.");
        assert_eq!(
            e.to_string(),
            "pickle byte 2: BINSTRING with negative length -5"
        );
        let e = error(b"\x80\x02T\x00\x01\x00\x00abc.");
        assert_eq!(
            e.message,
            "truncated: BINSTRING needs 256 bytes, only 4 left in the input"
        );
    }

    #[test]
    fn stack_and_mark_errors() {
        assert_eq!(error(b".").message, "stack underflow in STOP");
        assert_eq!(error(b"K\x01\x86.").message, "stack underflow in TUPLE2");
        assert_eq!(error(b"K\x01t.").message, "TUPLE without a MARK");
        assert_eq!(error(b"]K\x01e.").message, "APPENDS without a MARK");
        assert_eq!(error(b"q\x01.").message, "stack underflow in BINPUT");
        assert_eq!(
            error(b"h\x07.").message,
            "BINGET of memo index 7, which was never stored"
        );
        assert_eq!(
            error(b"K\x01K\x02a.").message,
            "APPEND on Int(1), not a container"
        );
        assert_eq!(
            error(b"}(K\x01u.").message,
            "SETITEMS with an odd number of items (1)"
        );
        assert_eq!(error(b"K\x01.K").message, "1 unexpected bytes after STOP");
    }

    #[test]
    fn build_checks_the_array_state() {
        // Replace the dtype u1 state's byte order '|' by '>'.
        let mut p = tiny_array();
        let at = p.windows(3).position(|w| w == b"U\x01|").unwrap();
        p[at + 2] = b'>';
        let e = error(&p);
        assert!(e.message.contains("byte order Some(\">\")"), "{e}");
    }

    #[test]
    fn damaged_bytes_never_panic() {
        // Overwrite every byte of a valid pickle with opcodes and boundary
        // values: each result may be Ok or Err, but must not panic.
        let good = tiny_array();
        for at in 0..good.len() {
            for b in [
                0x00, 0x01, 0x7f, 0x80, 0xff, b'(', b'.', b'h', b'b', b'R', b't', b'e', b'u', b's',
            ] {
                let mut bad = good.clone();
                bad[at] = b;
                let _ = parse(&bad);
            }
        }
    }
}
