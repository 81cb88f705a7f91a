//! Property-based mutation tests of every parser: valid inputs (fixtures and
//! the files of `tests/hostile/valid`) get random byte flips, overwrites,
//! insertions, deletions and truncations, and each parser must return `Ok`
//! or `Err` without panicking and without any single allocation larger than
//! a fixed bound. Explicit tests check that headers claiming absurd sizes
//! fail at once, before allocating.

mod common;

use common::fixtures;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{Read, Write};
use std::path::Path;

use fastnn::data::cifar::{self, Cifar100Labels, CifarKind};
use fastnn::data::csv::{read_csv_from, CsvOptions};
use fastnn::data::idx::parse_idx;
use fastnn::data::{pickle, Dataset};
use fastnn::{checkpoint, tensorfile};
use proptest::prelude::*;

// ---- the largest single allocation of this thread, and the total ------------

struct Tracking;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static TOTAL: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Tracking {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    // try_with: the thread-local may be gone while a thread shuts down.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    let _ = TOTAL.try_with(|t| t.set(t.get() + size));
}

#[global_allocator]
static ALLOC: Tracking = Tracking;

/// Runs `f` and returns the size of the largest single allocation it made.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    f();
    LARGEST.with(Cell::get)
}

/// Runs `f` and returns the bytes it allocated in all (reallocations count
/// their new size).
fn total_allocation(f: impl FnOnce()) -> usize {
    TOTAL.with(|t| t.set(0));
    f();
    TOTAL.with(Cell::get)
}

/// No parser may ask for more than this at once on these small inputs
/// (the tar reader's capacity hint is capped at 64 MiB).
const ALLOC_BOUND: usize = 80 << 20;

// ---- inputs -------------------------------------------------------------------

fn valid(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/hostile/valid")
            .join(name),
    )
    .unwrap()
}

fn gunzip(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

/// The uncompressed tar of the CIFAR-100 binary fixture.
fn cifar100_tar() -> Vec<u8> {
    gunzip(&std::fs::read(fixtures().join("cifar-100-binary.tar.gz")).unwrap())
}

/// A member of an uncompressed tar, by file name.
fn tar_member(tar_bytes: &[u8], name: &str) -> Vec<u8> {
    let mut archive = tar::Archive::new(tar_bytes);
    for e in archive.entries().unwrap() {
        let mut e = e.unwrap();
        if e.path().unwrap().file_name().is_some_and(|n| n == name) {
            let mut out = Vec::new();
            e.read_to_end(&mut out).unwrap();
            return out;
        }
    }
    panic!("no member {name}");
}

// ---- mutations ------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Set(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn byte() -> impl Strategy<Value = u8> {
    prop_oneof![Just(0u8), Just(0xff), Just(0x7f), Just(0x80), any::<u8>()]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        4 => (any::<usize>(), 1..=255u8).prop_map(|(i, b)| Edit::Flip(i, b)),
        4 => (any::<usize>(), byte()).prop_map(|(i, b)| Edit::Set(i, b)),
        2 => (any::<usize>(), byte()).prop_map(|(i, b)| Edit::Insert(i, b)),
        2 => any::<usize>().prop_map(Edit::Delete),
        1 => any::<usize>().prop_map(Edit::Truncate),
    ];
    proptest::collection::vec(edit, 1..6)
}

fn mutate(base: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut v = base.to_vec();
    for e in edits {
        let n = v.len();
        match *e {
            Edit::Flip(i, b) if n > 0 => v[i % n] ^= b,
            Edit::Set(i, b) if n > 0 => v[i % n] = b,
            Edit::Insert(i, b) => v.insert(i % (n + 1), b),
            Edit::Delete(i) if n > 0 => {
                v.remove(i % n);
            }
            Edit::Truncate(i) => v.truncate(i % (n + 1)),
            _ => {}
        }
    }
    v
}

/// Runs `parse` on a mutation of `base` and checks the allocation bound;
/// a panic fails the property by itself.
fn survives(base: &[u8], e: &[Edit], parse: impl FnOnce(&[u8])) -> Result<(), TestCaseError> {
    let input = mutate(base, e);
    let largest = largest_allocation(|| parse(&input));
    prop_assert!(
        largest <= ALLOC_BOUND + 16 * input.len(),
        "allocated {largest} bytes at once for a {}-byte input",
        input.len()
    );
    Ok(())
}

/// Recomputes `data_crc32` of a safetensors file, keeping the header length,
/// so that mutations reach the checks behind the checksum.
fn fix_crc(data: &[u8]) -> Option<Vec<u8>> {
    let h = tensorfile::parse(data).ok()?;
    let mut json: serde_json::Value = serde_json::from_slice(&data[8..h.data_start]).ok()?;
    let crc = format!("{:08x}", crc32fast::hash(&data[h.data_start..]));
    json.get_mut("__metadata__")?
        .as_object_mut()?
        .insert("data_crc32".into(), crc.into());
    let mut text = json.to_string();
    let n = h.data_start - 8;
    if text.len() > n {
        return None;
    }
    text.extend(std::iter::repeat_n(' ', n - text.len()));
    let mut out = data[..8].to_vec();
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&data[h.data_start..]);
    Some(out)
}

fn open_as_file(bytes: &[u8]) {
    let mut tmp = tempfile::NamedTempFile::new().unwrap();
    tmp.write_all(bytes).unwrap();
    tmp.flush().unwrap();
    if let Ok(ds) = Dataset::open(tmp.path()) {
        let _ = ds.stats();
        for name in ds.split_names().to_vec() {
            let _ = ds.split(&name);
        }
    }
}

// ---- the properties --------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn pickle_mutations(e in edits(), which in 0..3usize) {
        let name = ["tiny_batch_3img.pkl", "py3_proto2_np2.pkl", "py3_proto4_np2.pkl"][which];
        let base = std::fs::read(fixtures().join(name)).unwrap();
        survives(&base, &e, |b| {
            let _ = pickle::parse(b);
            let _ = cifar::parse_batch(CifarKind::Cifar10Python, b);
        })?;
    }

    #[test]
    fn cifar_record_mutations(e in edits(), hundred in any::<bool>()) {
        let (kind, base) = if hundred {
            let tar = cifar100_tar();
            (CifarKind::Cifar100Binary, tar_member(&tar, "test.bin"))
        } else {
            let tar = gunzip(&std::fs::read(fixtures().join("cifar-10-binary.tar.gz")).unwrap());
            (CifarKind::Cifar10Binary, tar_member(&tar, "test_batch.bin")[..3 * 3073].to_vec())
        };
        survives(&base, &e, |b| {
            let _ = cifar::parse_batch(kind, b);
        })?;
    }

    #[test]
    fn idx_mutations(e in edits(), images in any::<bool>()) {
        let dir = fixtures().join("mnist-tiny");
        let (file, ndim) = if images {
            ("train-images-idx3-ubyte.gz", 3)
        } else {
            ("train-labels-idx1-ubyte.gz", 1)
        };
        let base = gunzip(&std::fs::read(dir.join(file)).unwrap());
        survives(&base, &e, |b| {
            if let Ok(a) = parse_idx(Path::new("f"), b, ndim) {
                assert_eq!(a.data.len(), a.dims.iter().product::<usize>());
            }
        })?;
    }

    #[test]
    fn csv_mutations(e in edits()) {
        let base = valid("table.csv");
        survives(&base, &e, |b| {
            let _ = read_csv_from(Path::new("t.csv"), b, &CsvOptions::default());
        })?;
    }

    #[test]
    fn safetensors_header_mutations(e in edits(), which in 0..3usize) {
        let base = valid(["dataset.safetensors", "run/model.safetensors", "run/checkpoint.safetensors"][which]);
        // Mutations of the header only: data bytes are covered by the CRC.
        let header_end = 8 + u64::from_le_bytes(base[..8].try_into().unwrap()) as usize;
        let e: Vec<Edit> = e.into_iter().map(|x| match x {
            Edit::Flip(i, b) => Edit::Flip(i % header_end, b),
            Edit::Set(i, b) => Edit::Set(i % header_end, b),
            other => other,
        }).collect();
        survives(&base, &e, |b| {
            if tensorfile::parse(b).is_ok() {
                open_as_file(&fix_crc(b).unwrap_or_else(|| b.to_vec()));
            }
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn checkpoint_mutations(e in edits(), model in any::<bool>()) {
        let base = valid(if model { "run/model.safetensors" } else { "run/checkpoint.safetensors" });
        survives(&base, &e, |b| {
            let b = fix_crc(b).unwrap_or_else(|| b.to_vec());
            let _ = checkpoint::load_bytes(Path::new("c"), b.clone());
            let _ = checkpoint::load_model_bytes(Path::new("m"), b);
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 100, failure_persistence: None, ..ProptestConfig::default() })]

    /// The whole tarball reader: mutations of the tar (then gzip'd) and of
    /// the gzip stream itself.
    #[test]
    fn cifar_tarball_mutations(e in edits(), of_gzip in any::<bool>()) {
        let tar = cifar100_tar();
        let read = |gz: &[u8]| {
            let _ = cifar::read_tarball_from(Path::new("a.tar.gz"), gz, CifarKind::Cifar100Binary, Cifar100Labels::Fine);
        };
        if of_gzip {
            survives(&gzip(&tar), &e, read)?;
        } else {
            survives(&tar, &e, |t| read(&gzip(t)))?;
        }
    }
}

// ---- absurd sizes in headers --------------------------------------------------------

/// Asserts that `f` fails with `fragment` without allocating more than 1 MiB.
fn fails_small(fragment: &str, f: impl FnOnce() -> Result<(), String>) {
    let mut result = Ok(());
    let largest = largest_allocation(|| result = f());
    let e = result.expect_err("should fail");
    assert!(e.contains(fragment), "{fragment:?} not in {e:?}");
    assert!(largest < 1 << 20, "allocated {largest} bytes for: {e}");
}

#[test]
fn idx_header_claiming_billions_of_images() {
    let mut b = vec![0, 0, 8, 3];
    for d in [4_000_000_000u32, 28, 28] {
        b.extend(d.to_be_bytes());
    }
    b.extend([0u8; 100]);
    fails_small("need 3136000000016 bytes, the file has 116", || {
        parse_idx(Path::new("f"), &b, 3)
            .map(drop)
            .map_err(|e| e.to_string())
    });
    // Labels: 4·10^9 of them in a 10-byte file.
    let mut l = vec![0, 0, 8, 1];
    l.extend(4_000_000_000u32.to_be_bytes());
    l.extend([1u8; 2]);
    fails_small("need 4000000008 bytes", || {
        parse_idx(Path::new("f"), &l, 1)
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

#[test]
fn pickle_string_lengths_beyond_the_input() {
    let parse = |b: &[u8]| pickle::parse(b).map(drop).map_err(|e| e.to_string());
    fails_small("BINSTRING needs 2147483647 bytes", || {
        parse(b"\x80\x02T\xff\xff\xff\x7fabc.")
    });
    fails_small("BINBYTES needs 4294967295 bytes", || {
        parse(b"\x80\x03B\xff\xff\xff\xffabc.")
    });
    fails_small("BINBYTES8 needs 1000000000000 bytes", || {
        let mut p = b"\x80\x04\x8e".to_vec();
        p.extend(1_000_000_000_000u64.to_le_bytes());
        p.extend(b"xyz.");
        parse(&p)
    });
    fails_small("BINUNICODE needs 4294967295 bytes", || {
        parse(b"\x80\x04X\xff\xff\xff\xffabc.")
    });
}

#[test]
fn safetensors_shapes_beyond_the_file() {
    let file = |header: &str| {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend(header.as_bytes());
        f.extend([0u8; 64]);
        f
    };
    let parse = |b: &[u8]| tensorfile::parse(b).map(drop);
    fails_small("ends at byte", || {
        parse(&file(
            r#"{"x":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,4000000000000]}}"#,
        ))
    });
    fails_small("overflows", || {
        parse(&file(
            r#"{"x":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,64]}}"#,
        ))
    });
    fails_small("header claims 1000000000000 bytes", || {
        let mut f = 1_000_000_000_000u64.to_le_bytes().to_vec();
        f.extend(b"{}");
        parse(&f)
    });
}

#[test]
fn cifar_member_claiming_a_terabyte() {
    let mut header = tar::Header::new_gnu();
    header.set_path("cifar-100-binary/train.bin").unwrap();
    header.set_size(1_000_000_000_000);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut t = header.as_bytes().to_vec();
    t.extend([0u8; 1024]);
    let gz = gzip(&t);
    fails_small("the tar header claims 1000000000000 bytes", || {
        cifar::read_tarball_from(
            Path::new("a.tar.gz"),
            &gz[..],
            CifarKind::Cifar100Binary,
            Cifar100Labels::Fine,
        )
        .map(drop)
        .map_err(|e| e.to_string())
    });
}

#[test]
fn model_file_claiming_a_huge_network() {
    let model = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/hostile/model-huge-dims.safetensors"),
    )
    .unwrap();
    fails_small("need 10000400003 parameters", || {
        checkpoint::load_model_bytes(Path::new("m"), model)
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

#[test]
fn a_pickle_reusing_one_large_tuple_allocates_in_proportion_to_its_input() {
    // A 20,000-item tuple ('u1', 0, 0, …), memoised, then passed 2,000
    // times to numpy.dtype, whose REDUCE reads only the first item. Copying
    // the whole tuple at every REDUCE would allocate 2,000 × 20,000 values
    // (hundreds of MB) for a 50 kB input.
    let mut p = b"\x80\x02]((U\x02u1".to_vec();
    for _ in 0..20_000 {
        p.extend(b"K\x00");
    }
    p.extend(b"tq\x01cnumpy\ndtype\nq\x02");
    for _ in 0..2_000 {
        p.extend(b"h\x02h\x01R");
    }
    p.extend(b"e.");
    let mut items = None;
    let allocated = total_allocation(|| {
        let doc = pickle::parse(&p).expect("a valid pickle");
        items = doc.items(doc.root).map(<[_]>::len);
    });
    assert_eq!(items, Some(2_002));
    assert!(
        allocated < 64 * p.len(),
        "parsing {} bytes allocated {allocated} bytes",
        p.len()
    );
}
