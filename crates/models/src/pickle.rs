//! PyTorch `torch.save` state dicts (`.pth`) without Python: libtorch's loader first, then, for
//! what it refuses, a restricted unpickler that builds only data.
//!
//! libtorch's parameter loader (`Tensor::loadz_multi`) reads a zip-format file holding a plain
//! `dict` of tensors, but refuses an `OrderedDict` (what `model.state_dict()` returns, so most
//! real files) and the pre-1.6 legacy format (torchvision's `vgg16-397923af.pth`). For those we
//! interpret the pickle ourselves: a stack machine over the opcodes `torch.save` emits, where the
//! only globals allowed are `collections.OrderedDict`, the tensor rebuild functions of
//! `torch._utils` and the typed storage classes (`torch.FloatStorage`, ...). Any other global,
//! and any opcode outside that set, is an error naming it; nothing is ever called or imported,
//! so a malicious file can at worst fail to load.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use tch::{Kind, Tensor};

use crate::ModelError;

/// Named tensors of a `torch.save` file; nested dicts give dotted names
/// (`{"state_dict": {"features.0.weight": ...}}` -> `state_dict.features.0.weight`).
pub fn read_torch_state_dict(path: &Path) -> Result<Vec<(String, Tensor)>, ModelError> {
    match Tensor::loadz_multi(path) {
        Ok(tensors) if !tensors.is_empty() => {
            tracing::debug!(path = %path.display(), "read by libtorch's loader");
            return Ok(tensors);
        }
        Ok(_) => {
            tracing::debug!(path = %path.display(), "libtorch's loader found no tensors; trying the restricted unpickler")
        }
        Err(e) => {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default();
            tracing::debug!(path = %path.display(), libtorch = first, "libtorch's loader refused it; trying the restricted unpickler");
        }
    }
    let err = |reason: String| ModelError::Weights { path: path.to_owned(), reason };
    let bytes =
        std::fs::read(path).map_err(|source| ModelError::Io { path: path.to_owned(), source })?;
    let root = if bytes.starts_with(b"PK\x03\x04") {
        read_zip(&bytes).map_err(err)?
    } else if bytes.starts_with(&[0x80, 0x02]) {
        read_legacy(&bytes).map_err(err)?
    } else {
        return Err(
            err("not a torch.save file (neither a zip archive nor a legacy pickle)".into()),
        );
    };
    let mut out = Vec::new();
    flatten("", &root, &mut out).map_err(err)?;
    if out.is_empty() {
        return Err(err("the file holds no tensors".into()));
    }
    tracing::debug!(path = %path.display(), tensors = out.len(), "read by the restricted unpickler");
    Ok(out)
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, Tensor)>) -> Result<(), String> {
    match value {
        Value::Dict(items) => {
            for (k, v) in items.borrow().iter() {
                let key = match k {
                    Value::Str(s) => s.clone(),
                    Value::Int(i) => i.to_string(),
                    _ => continue,
                };
                let name = if prefix.is_empty() { key } else { format!("{prefix}.{key}") };
                flatten(&name, v, out)?;
            }
        }
        Value::Tensor(t) => {
            out.push((prefix.to_owned(), t.build().map_err(|e| format!("tensor {prefix}: {e}"))?))
        }
        _ => {}
    }
    Ok(())
}

/// Zip format (torch >= 1.6): `<root>/data.pkl` plus one raw little-endian file per storage,
/// `<root>/data/<key>`.
fn read_zip(bytes: &[u8]) -> Result<Value, String> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a readable zip archive: {e}"))?;
    let pkl_name = zip
        .file_names()
        .map(str::to_owned)
        .find(|n| n.ends_with("data.pkl") && n.matches('/').count() <= 1)
        .ok_or("zip archive without data.pkl: not a torch.save file")?;
    let root = pkl_name.strip_suffix("data.pkl").unwrap_or_default().to_owned();
    let mut read = |name: &str| -> Result<Vec<u8>, String> {
        let mut entry = zip.by_name(name).map_err(|e| format!("{name}: {e}"))?;
        let mut out = Vec::with_capacity(entry.size().min(1 << 32) as usize);
        entry.read_to_end(&mut out).map_err(|e| format!("{name}: {e}"))?;
        Ok(out)
    };
    if let Ok(order) = read(&format!("{root}byteorder"))
        && order != b"little"
    {
        return Err(format!("byte order {:?} is not supported", String::from_utf8_lossy(&order)));
    }
    let pickle = read(&pkl_name)?;
    let (value, storages) = Unpickler::new(&pickle).run()?;
    for storage in storages {
        let data = read(&format!("{root}data/{}", storage.key))?;
        storage.fill(data)?;
    }
    Ok(value)
}

/// Legacy format (torch < 1.6): pickles of the magic number, the protocol version, system info,
/// the object and the storage keys, then each storage as an i64 element count and its data.
fn read_legacy(bytes: &[u8]) -> Result<Value, String> {
    const MAGIC: i64 = 0x1950a86a20f9469cfc6c_i128 as i64; // compared on its low 64 bits
    let mut pos = 0;
    let mut next = |what: &str| -> Result<(Value, Vec<Rc<StorageRef>>), String> {
        let mut u = Unpickler::new(&bytes[pos..]);
        let out = u.run().map_err(|e| format!("{what}: {e}"))?;
        pos += u.pos;
        Ok(out)
    };
    match next("magic number")?.0 {
        Value::Int(m) if m == MAGIC => {}
        _ => return Err("not a torch.save file (bad magic number)".into()),
    }
    match next("protocol version")?.0 {
        Value::Int(1001) => {}
        other => return Err(format!("unsupported legacy protocol version {other:?}")),
    }
    let _sys_info = next("system info")?;
    let (value, storages) = next("state dict")?;
    let keys = match next("storage keys")?.0 {
        Value::List(keys) => keys
            .borrow()
            .iter()
            .map(|k| {
                if let Value::Str(s) = k {
                    Ok(s.clone())
                } else {
                    Err(format!("storage key {k:?} is not a string"))
                }
            })
            .collect::<Result<Vec<_>, _>>()?,
        other => return Err(format!("storage keys: expected a list, found {other:?}")),
    };
    let by_key: HashMap<&str, &StorageRef> =
        storages.iter().map(|s| (s.key.as_str(), &**s)).collect();
    for key in &keys {
        let storage = by_key
            .get(key.as_str())
            .ok_or_else(|| format!("storage {key} listed but never used"))?;
        let count = bytes.get(pos..pos + 8).ok_or("file ends inside a storage header")?;
        let count = i64::from_le_bytes(count.try_into().expect("8 bytes"));
        let len = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(storage.kind.elt_size_in_bytes()))
            .ok_or("bad storage size")?;
        pos += 8;
        let data = bytes
            .get(pos..pos.checked_add(len).ok_or("bad storage size")?)
            .ok_or_else(|| format!("file ends inside storage {key}"))?;
        pos += len;
        storage.fill(data.to_vec())?;
    }
    Ok(value)
}

/// A storage named by a persistent id; its bytes arrive after the pickle is read.
#[derive(Debug)]
struct StorageRef {
    key: String,
    kind: Kind,
    numel: usize,
    data: RefCell<Option<Vec<u8>>>,
}

impl StorageRef {
    fn fill(&self, data: Vec<u8>) -> Result<(), String> {
        let want = self.numel * self.kind.elt_size_in_bytes();
        if data.len() < want {
            return Err(format!(
                "storage {} holds {} bytes, expected {want}",
                self.key,
                data.len()
            ));
        }
        *self.data.borrow_mut() = Some(data);
        Ok(())
    }
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, ...)`.
#[derive(Debug)]
struct TensorRef {
    storage: Rc<StorageRef>,
    offset: i64,
    size: Vec<i64>,
    stride: Vec<i64>,
}

impl TensorRef {
    fn build(&self) -> Result<Tensor, String> {
        let data = self.storage.data.borrow();
        let data =
            data.as_ref().ok_or_else(|| format!("storage {} has no data", self.storage.key))?;
        // The furthest element the view touches must lie inside the storage.
        let mut last = self.offset;
        for (&n, &s) in self.size.iter().zip(&self.stride) {
            if n < 0 || s < 0 {
                return Err(format!("negative size or stride {:?} / {:?}", self.size, self.stride));
            }
            if n == 0 {
                last = -1;
                break;
            }
            last = last
                .checked_add((n - 1).checked_mul(s).ok_or("stride overflow")?)
                .ok_or("stride overflow")?;
        }
        if self.offset < 0 || last >= self.storage.numel as i64 {
            return Err(format!(
                "view {:?}/{:?}+{} exceeds its storage of {} elements",
                self.size, self.stride, self.offset, self.storage.numel
            ));
        }
        let bytes = &data[..self.storage.numel * self.storage.kind.elt_size_in_bytes()];
        let flat = Tensor::f_from_data_size(bytes, &[self.storage.numel as i64], self.storage.kind)
            .map_err(|e| e.to_string())?;
        flat.f_as_strided(&self.size, &self.stride, self.offset)
            .and_then(|t| t.f_contiguous())
            .map_err(|e| e.to_string())
    }
}

// Scalars and bytes are only ever looked at through Debug, in error messages.
#[allow(dead_code)]
#[derive(Debug, Clone)]
enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<Value>),
    List(Rc<RefCell<Vec<Value>>>),
    Dict(Rc<RefCell<Vec<(Value, Value)>>>),
    Global(&'static str),
    Storage(Rc<StorageRef>),
    Tensor(Rc<TensorRef>),
}

/// The globals a state dict may name; everything else is refused.
const ALLOWED_GLOBALS: [&str; 4] = [
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
];

fn storage_kind(name: &str) -> Option<Kind> {
    Some(match name {
        "torch.FloatStorage" => Kind::Float,
        "torch.DoubleStorage" => Kind::Double,
        "torch.HalfStorage" => Kind::Half,
        "torch.BFloat16Storage" => Kind::BFloat16,
        "torch.LongStorage" => Kind::Int64,
        "torch.IntStorage" => Kind::Int,
        "torch.ShortStorage" => Kind::Int16,
        "torch.CharStorage" => Kind::Int8,
        "torch.ByteStorage" => Kind::Uint8,
        "torch.BoolStorage" => Kind::Bool,
        _ => return None,
    })
}

/// Maps an allowed global to a `'static` name, refusing all others.
fn global(module: &str, name: &str) -> Result<Value, String> {
    let full = format!("{module}.{name}");
    if let Some(g) = ALLOWED_GLOBALS.iter().find(|g| **g == full) {
        return Ok(Value::Global(g));
    }
    const STORAGES: [&str; 10] = [
        "torch.FloatStorage",
        "torch.DoubleStorage",
        "torch.HalfStorage",
        "torch.BFloat16Storage",
        "torch.LongStorage",
        "torch.IntStorage",
        "torch.ShortStorage",
        "torch.CharStorage",
        "torch.ByteStorage",
        "torch.BoolStorage",
    ];
    if let Some(g) = STORAGES.iter().find(|g| **g == full) {
        return Ok(Value::Global(g));
    }
    Err(format!("refusing to unpickle global {full} (only tensors, dicts and lists are read)"))
}

struct Unpickler<'a> {
    bytes: &'a [u8],
    pos: usize,
    stack: Vec<Value>,
    marks: Vec<usize>,
    memo: HashMap<u32, Value>,
    storages: Vec<Rc<StorageRef>>,
}

impl<'a> Unpickler<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            pos: 0,
            stack: Vec::new(),
            marks: Vec::new(),
            memo: HashMap::new(),
            storages: Vec::new(),
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or("pickle ends early")?;
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes")))
    }

    fn line(&mut self) -> Result<&'a str, String> {
        let rest = &self.bytes[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n').ok_or("pickle ends inside a line")?;
        let line = std::str::from_utf8(&rest[..end]).map_err(|_| "non-UTF-8 global name")?;
        self.pos += end + 1;
        Ok(line)
    }

    fn pop(&mut self) -> Result<Value, String> {
        self.stack.pop().ok_or_else(|| "pickle stack underflow".to_owned())
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>, String> {
        let mark = self.marks.pop().ok_or("pickle MARK missing")?;
        if mark > self.stack.len() {
            return Err("pickle MARK beyond the stack".into());
        }
        Ok(self.stack.split_off(mark))
    }

    fn top(&mut self) -> Result<&mut Value, String> {
        self.stack.last_mut().ok_or_else(|| "pickle stack underflow".to_owned())
    }

    fn string(&mut self, n: usize) -> Result<Value, String> {
        let b = self.take(n)?;
        Ok(Value::Str(std::str::from_utf8(b).map_err(|_| "invalid UTF-8 string")?.to_owned()))
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<(), String> {
        if !items.len().is_multiple_of(2) {
            return Err("odd number of dict items".into());
        }
        let Value::Dict(dict) = self.top()? else {
            return Err("SETITEM(S) on something that is not a dict".into());
        };
        let dict = dict.clone();
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            dict.borrow_mut().push((k, v));
        }
        Ok(())
    }

    /// Runs until STOP; returns the object and the storages its persistent ids named.
    fn run(&mut self) -> Result<(Value, Vec<Rc<StorageRef>>), String> {
        loop {
            let at = self.pos;
            let op = self.u8()?;
            match op {
                0x80 => {
                    let proto = self.u8()?;
                    if proto > 5 {
                        return Err(format!("pickle protocol {proto} is not supported"));
                    }
                }
                0x95 => {
                    self.take(8)?; // FRAME: a length hint
                }
                b'.' => {
                    let v = self.pop()?;
                    return Ok((v, std::mem::take(&mut self.storages)));
                }
                b'(' => self.marks.push(self.stack.len()),
                b'0' => {
                    self.pop()?;
                }
                b'1' => {
                    self.pop_mark()?;
                }
                b'2' => {
                    let v = self.top()?.clone();
                    self.stack.push(v);
                }
                b'N' => self.stack.push(Value::None),
                0x88 => self.stack.push(Value::Bool(true)),
                0x89 => self.stack.push(Value::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(self.take(4)?.try_into().expect("4 bytes"));
                    self.stack.push(Value::Int(v.into()));
                }
                b'K' => {
                    let v = self.u8()?;
                    self.stack.push(Value::Int(v.into()));
                }
                b'M' => {
                    let v = u16::from_le_bytes(self.take(2)?.try_into().expect("2 bytes"));
                    self.stack.push(Value::Int(v.into()));
                }
                0x8a => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?;
                    // Little-endian two's complement; values beyond 64 bits keep their low 64
                    // bits (only the legacy magic number is that long).
                    let mut buf =
                        [if b.last().is_some_and(|&x| x & 0x80 != 0) { 0xff } else { 0 }; 8];
                    for (i, &x) in b.iter().take(8).enumerate() {
                        buf[i] = x;
                    }
                    self.stack.push(Value::Int(i64::from_le_bytes(buf)));
                }
                b'G' => {
                    let v = f64::from_be_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    self.stack.push(Value::Float(v));
                }
                b'X' => {
                    let n = self.u32()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8c => {
                    let n = self.u8()? as usize;
                    let v = self.string(n)?;
                    self.stack.push(v);
                }
                0x8d => {
                    let n = u64::from_le_bytes(self.take(8)?.try_into().expect("8 bytes"));
                    let v = self.string(usize::try_from(n).map_err(|_| "string too long")?)?;
                    self.stack.push(v);
                }
                b'T' | b'B' => {
                    let n = self.u32()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(if op == b'T' {
                        Value::Str(String::from_utf8_lossy(&b).into_owned())
                    } else {
                        Value::Bytes(b)
                    });
                }
                b'U' | b'C' => {
                    let n = self.u8()? as usize;
                    let b = self.take(n)?.to_vec();
                    self.stack.push(if op == b'U' {
                        Value::Str(String::from_utf8_lossy(&b).into_owned())
                    } else {
                        Value::Bytes(b)
                    });
                }
                b')' => self.stack.push(Value::Tuple(Vec::new())),
                b't' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = (op - 0x84) as usize;
                    if self.stack.len() < n {
                        return Err("pickle stack underflow".into());
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.stack.push(Value::Tuple(items));
                }
                b']' => self.stack.push(Value::List(Rc::default())),
                b'l' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::List(Rc::new(RefCell::new(items))));
                }
                b'a' => {
                    let v = self.pop()?;
                    let Value::List(list) = self.top()? else {
                        return Err("APPEND on something that is not a list".into());
                    };
                    list.borrow_mut().push(v);
                }
                b'e' => {
                    let items = self.pop_mark()?;
                    let Value::List(list) = self.top()? else {
                        return Err("APPENDS on something that is not a list".into());
                    };
                    list.borrow_mut().extend(items);
                }
                b'}' => self.stack.push(Value::Dict(Rc::default())),
                b'd' => {
                    let items = self.pop_mark()?;
                    self.stack.push(Value::Dict(Rc::default()));
                    self.set_items(items)?;
                }
                b's' => {
                    let v = self.pop()?;
                    let k = self.pop()?;
                    self.set_items(vec![k, v])?;
                }
                b'u' => {
                    let items = self.pop_mark()?;
                    self.set_items(items)?;
                }
                b'q' => {
                    let i = self.u8()?.into();
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'r' => {
                    let i = self.u32()?;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                0x94 => {
                    let i = self.memo.len() as u32;
                    let v = self.top()?.clone();
                    self.memo.insert(i, v);
                }
                b'h' | b'j' => {
                    let i = if op == b'h' { self.u8()?.into() } else { self.u32()? };
                    let v = self
                        .memo
                        .get(&i)
                        .cloned()
                        .ok_or_else(|| format!("pickle memo {i} missing"))?;
                    self.stack.push(v);
                }
                b'c' => {
                    let module = self.line()?;
                    let name = self.line()?;
                    let g = global(module, name)?;
                    self.stack.push(g);
                }
                0x93 => {
                    let name = self.pop()?;
                    let module = self.pop()?;
                    let (Value::Str(module), Value::Str(name)) = (module, name) else {
                        return Err("STACK_GLOBAL without strings".into());
                    };
                    let g = global(&module, &name)?;
                    self.stack.push(g);
                }
                b'Q' => {
                    let pid = self.pop()?;
                    let storage = self.persistent_load(pid)?;
                    self.stack.push(storage);
                }
                b'R' => {
                    let args = self.pop()?;
                    let func = self.pop()?;
                    let v = reduce(func, args)?;
                    self.stack.push(v);
                }
                b'b' => {
                    // BUILD sets attributes (an OrderedDict's `_metadata`): irrelevant to tensors.
                    self.pop()?;
                }
                _ => {
                    return Err(format!(
                        "refusing pickle opcode 0x{op:02x} at byte {at} (only data-building opcodes are read)"
                    ));
                }
            }
        }
    }

    /// `('storage', storage_type, key, location, numel[, view_metadata])`.
    fn persistent_load(&mut self, pid: Value) -> Result<Value, String> {
        let Value::Tuple(items) = pid else {
            return Err(format!("persistent id {pid:?} is not a tuple"));
        };
        match &items[..] {
            [
                Value::Str(tag),
                Value::Global(class),
                Value::Str(key),
                Value::Str(_location),
                Value::Int(numel),
                rest @ ..,
            ] if tag == "storage" && rest.iter().all(|v| matches!(v, Value::None)) => {
                let kind = storage_kind(class)
                    .ok_or_else(|| format!("storage type {class} is not supported"))?;
                if let Some(s) = self.storages.iter().find(|s| s.key == *key) {
                    return Ok(Value::Storage(s.clone()));
                }
                let numel = usize::try_from(*numel)
                    .map_err(|_| format!("storage {key} has size {numel}"))?;
                let storage =
                    Rc::new(StorageRef { key: key.clone(), kind, numel, data: RefCell::new(None) });
                self.storages.push(storage.clone());
                Ok(Value::Storage(storage))
            }
            _ => Err(format!(
                "unsupported persistent id {items:?} (storage views are not supported)"
            )),
        }
    }
}

fn ints(v: &Value, what: &str) -> Result<Vec<i64>, String> {
    match v {
        Value::Tuple(items) => items
            .iter()
            .map(|i| {
                if let Value::Int(i) = i {
                    Ok(*i)
                } else {
                    Err(format!("{what}: {i:?} is not an int"))
                }
            })
            .collect(),
        other => Err(format!("{what}: expected a tuple, found {other:?}")),
    }
}

/// Calls one of the allowed globals, by our own implementation.
fn reduce(func: Value, args: Value) -> Result<Value, String> {
    let Value::Global(name) = func else { return Err(format!("REDUCE on {func:?}")) };
    let Value::Tuple(args) = args else {
        return Err(format!("{name}: arguments {args:?} are not a tuple"));
    };
    match name {
        "collections.OrderedDict" => Ok(Value::Dict(Rc::default())),
        "torch._utils._rebuild_tensor_v2" => match &args[..] {
            [Value::Storage(storage), Value::Int(offset), size, stride, ..] => {
                let size = ints(size, "tensor size")?;
                let stride = ints(stride, "tensor stride")?;
                if size.len() != stride.len() {
                    return Err(format!(
                        "tensor size {size:?} and stride {stride:?} differ in rank"
                    ));
                }
                Ok(Value::Tensor(Rc::new(TensorRef {
                    storage: storage.clone(),
                    offset: *offset,
                    size,
                    stride,
                })))
            }
            _ => Err(format!("{name}: unexpected arguments {args:?}")),
        },
        "torch._utils._rebuild_parameter" | "torch._utils._rebuild_parameter_with_state" => {
            match args.first() {
                Some(t @ Value::Tensor(_)) => Ok(t.clone()),
                _ => Err(format!("{name}: unexpected arguments {args:?}")),
            }
        }
        _ => Err(format!("{name} cannot be called")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(bytes: &[u8]) -> Result<Value, String> {
        Unpickler::new(bytes).run().map(|(v, _)| v)
    }

    #[test]
    fn plain_data() {
        // pickle.dumps({'a': [1, 2.5, None, True], 'b': (300, -5)}, protocol=2)
        let bytes = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01G@\x04\x00\x00\x00\x00\x00\x00N\x88eX\x01\x00\x00\x00bq\x03M,\x01J\xfb\xff\xff\xff\x86q\x04u.";
        let v = run(bytes).unwrap();
        assert_eq!(
            format!("{v:?}"),
            r#"Dict(RefCell { value: [(Str("a"), List(RefCell { value: [Int(1), Float(2.5), None, Bool(true)] })), (Str("b"), Tuple([Int(300), Int(-5)]))] })"#
        );
    }

    fn check_refused(bytes: &[u8], expect: &str) {
        let err = run(bytes).unwrap_err();
        assert!(err.contains(expect), "{err}");
    }

    #[test]
    fn code_is_refused() {
        // pickle.dumps(os.system) style payloads: cos\nsystem\n(S'echo hi'\ntR.
        check_refused(b"cos\nsystem\n(S'echo hi'\ntR.", "refusing to unpickle global os.system");
        check_refused(b"\x80\x02cbuiltins\neval\nq\x00.", "global builtins.eval");
        // STACK_GLOBAL with strings
        check_refused(b"\x80\x04\x8c\x08builtins\x8c\x04exec\x93.", "global builtins.exec");
        // INST (opcode 'i') and OBJ ('o') build arbitrary objects
        check_refused(b"(ios\nsystem\n.", "opcode 0x69");
        check_refused(b"\x80\x02ccollections\nOrderedDict\n)\x81.", "opcode 0x81");
    }

    #[test]
    fn malformed_input_is_an_error() {
        check_refused(b"\x80\x02}", "ends early");
        check_refused(b"\x80\x02.", "underflow");
        check_refused(b"\x80\x02h\x05.", "memo 5 missing");
        check_refused(b"\x80\x02K\x01K\x02u.", "MARK missing");
        check_refused(b"\x80\x09.", "protocol 9");
    }
}
