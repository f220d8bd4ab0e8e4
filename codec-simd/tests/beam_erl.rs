//! The BEAM reader against real OTP: every `.beam` of the installation (MD5, atoms, exports,
//! locals, imports, lambdas as `beam_lib` decodes them), gzip-compressed files made by `erlc
//! +compressed` and `zlib:gzip`, every truncation of real files, mutations, and the memory a
//! hostile file can cost.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::Duration;

use distgate_codec::beam::{self, Beam, BeamErrorKind};
use distgate_testkit::erl;
use distgate_testkit::TempDir;
use proptest::prelude::*;

// ----- memory accounting: live bytes allocated by this thread, and their peak --------------

/// Counts bytes per thread so a test can measure what one parse cost, even with other tests of
/// this binary allocating on their threads at the same time. (unsafe: a global allocator is an
/// unsafe trait; this one only forwards to `System` and adds to two thread-local counters.)
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn track(delta: isize) {
    // try_with: allocations during thread teardown must not panic inside the allocator.
    let _ = LIVE.try_with(|l| {
        let v = l.get() + delta;
        l.set(v);
        let _ = PEAK.try_with(|p| {
            if v > p.get() {
                p.set(v)
            }
        });
    });
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// contract `GlobalAlloc` requires is `System`'s; the counting touches only thread-locals (and
// allocates nothing, so it cannot re-enter the allocator).
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: `l` is the caller's layout, which `GlobalAlloc::alloc`'s contract makes valid
        // (non-zero size) for `System` as for us.
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            track(l.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from this allocator with layout `l`, i.e. from `System.alloc` or
        // `System.realloc` with that layout, as the caller guarantees.
        unsafe { System.dealloc(p, l) };
        track(-(l.size() as isize));
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: `p` is a live block of layout `l` from `System` (via this allocator) and `new`
        // meets `realloc`'s contract, both guaranteed by the caller.
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            track(new as isize - l.size() as isize);
        }
        q
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Peak bytes allocated (above the starting level) by this thread while `f` runs.
fn peak_during<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(start));
    let r = f();
    let peak = PEAK.with(|p| p.get());
    (r, (peak - start).max(0) as usize)
}

// ----- helpers -------------------------------------------------------------------------------

fn hex_upper(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02X}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex from erl")).collect()
}

fn parse_file(bytes: &[u8]) -> Result<(String, [u8; 16]), beam::BeamError> {
    beam::module_md5(bytes, beam::DEFAULT_MAX_IMAGE)
}

/// A stdlib .beam of this installation (found through erl, so the version does not matter).
fn otp_beam(module: &str) -> PathBuf {
    let out = erl::eval(&format!("io:format(\"~s\", [code:which({module})])"));
    PathBuf::from(out.trim())
}

// ----- every .beam of the installation -------------------------------------------------------

/// One erl run decodes every .beam under `code:root_dir()` with beam_lib and writes a line per
/// file: path, module, beam_lib:md5, the atom table, labeled exports and locals, indexed
/// imports, and the FunT entries decoded by erl's binary matching (beam_lib has no decoded
/// form of FunT). Names are hex so any atom survives the trip.
const DUMP: &str = r#"
Root = code:root_dir(),
Files = lists:sort(filelib:fold_files(Root, "\\.beam$", true, fun(F, A) -> [F | A] end, [])),
H = fun(B) when is_binary(B) -> binary:encode_hex(B);
       (A) when is_atom(A) -> binary:encode_hex(atom_to_binary(A, utf8)) end,
I = fun(N) -> integer_to_binary(N) end,
J = fun(L) -> lists:join(",", L) end,
Line = fun(F) ->
    {ok, {M, Md5}} = beam_lib:md5(F),
    {ok, {M, [{atoms, As}, {labeled_exports, Es}, {indexed_imports, Is}]}} =
        beam_lib:chunks(F, [atoms, labeled_exports, indexed_imports]),
    {ok, {M, [{labeled_locals, Ls0}, {"FunT", FunT}]}} =
        beam_lib:chunks(F, [labeled_locals, "FunT"], [allow_missing_chunks]),
    Ls = case Ls0 of missing_chunk -> []; _ -> Ls0 end,
    AtomMap = maps:from_list(As),
    Funs = case FunT of
        missing_chunk -> [];
        <<_:32, R/binary>> -> [{maps:get(Fn, AtomMap), Ar, Lb, Ix, Nf, Ou}
                               || <<Fn:32, Ar:32, Lb:32, Ix:32, Nf:32, Ou:32>> <= R]
    end,
    [H(unicode:characters_to_binary(F)), " ", H(M), " ", H(Md5),
     " A:", J([H(A) || {_, A} <- lists:sort(As)]),
     " E:", J([[H(N), "/", I(Ar), "/", I(Lb)] || {N, Ar, Lb} <- Es]),
     " L:", J([[H(N), "/", I(Ar), "/", I(Lb)] || {N, Ar, Lb} <- Ls]),
     " I:", J([[I(Ix), "/", H(Mo), "/", H(Fu), "/", I(Ar)] || {Ix, Mo, Fu, Ar} <- lists:sort(Is)]),
     " F:", J([[H(N), "/", I(Ar), "/", I(Lb), "/", I(Ix), "/", I(Nf), "/", I(Ou)]
               || {N, Ar, Lb, Ix, Nf, Ou} <- Funs]),
     "\n"]
end,
{ok, Fd} = file:open(OUT, [write, binary]),
lists:foreach(fun(F) ->
    Text = try Line(F)
           catch C:R -> [H(unicode:characters_to_binary(F)), " ERROR ",
                         H(iolist_to_binary(io_lib:format("~p:~p", [C, R]))), "\n"]
           end,
    ok = file:write(Fd, Text)
end, Files),
ok = file:close(Fd),
io:format("~b", [length(Files)])
"#;

/// Our decoding of one file in the dump's line format (minus the path).
fn our_line(b: &Beam<'_>) -> Vec<(char, Vec<String>)> {
    let name = |i: u32| hex_upper(b.atom(i).expect("validated index").as_bytes());
    let funref = |e: beam::FunRef| format!("{}/{}/{}", name(e.function), e.arity, e.label);
    let mut exports: Vec<String> = b.exports().map(funref).collect();
    let mut locals: Vec<String> = b.locals().map(funref).collect();
    // beam_lib sorts exports and locals; compare as sets of entries (sorted the same way here).
    exports.sort();
    locals.sort();
    vec![
        ('A', b.atoms().map(|a| hex_upper(a.as_bytes())).collect()),
        ('E', exports),
        ('L', locals),
        (
            'I',
            b.imports()
                .enumerate()
                .map(|(i, e)| format!("{}/{}/{}/{}", i + 1, name(e.module), name(e.function), e.arity))
                .collect(),
        ),
        (
            'F',
            b.lambdas()
                .map(|l| {
                    format!("{}/{}/{}/{}/{}/{}", name(l.function), l.arity, l.label, l.index, l.num_free, l.old_uniq)
                })
                .collect(),
        ),
    ]
}

fn erl_fields(rest: &[&str]) -> Vec<(char, Vec<String>)> {
    rest.iter()
        .map(|f| {
            let (tag, list) = f.split_once(':').expect("tagged field");
            let mut items: Vec<String> =
                if list.is_empty() { Vec::new() } else { list.split(',').map(String::from).collect() };
            if tag == "E" || tag == "L" {
                items.sort();
            }
            (tag.chars().next().expect("tag"), items)
        })
        .collect()
}

#[test]
fn every_otp_beam_matches_beam_lib() {
    let dir = TempDir::new("dg_beam_dump");
    let out = dir.path().join("dump.txt");
    let expr = DUMP.replace("OUT", &erl::string_literal(&out.display().to_string()));
    let n: usize = erl::try_eval(&expr, Duration::from_secs(900))
        .unwrap_or_else(|e| panic!("{e}"))
        .trim()
        .parse()
        .expect("file count");
    let dump = std::fs::read_to_string(&out).expect("dump written");
    let lines: Vec<&str> = dump.lines().collect();
    assert_eq!(lines.len(), n);
    // The installation has hundreds of modules; a handful would mean the walk went wrong.
    assert!(n >= 500, "only {n} .beam files under the OTP root");

    let (mut checked, mut lambdas, mut gzipped) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for line in &lines {
        let fields: Vec<&str> = line.split(' ').collect();
        let path = PathBuf::from(String::from_utf8(unhex(fields[0])).expect("utf-8 path"));
        let bytes = std::fs::read(&path).expect("readable beam");
        gzipped += beam::is_gzip(&bytes) as usize;
        let mut scratch = Vec::new();
        let parsed = beam::image(&bytes, &mut scratch, beam::DEFAULT_MAX_IMAGE).and_then(Beam::parse);
        if fields[1] == "ERROR" {
            // beam_lib refused it: we must refuse it too.
            if parsed.is_ok() {
                failures.push(format!("{}: beam_lib refused ({}) but we parsed it", path.display(),
                    String::from_utf8_lossy(&unhex(fields[2]))));
            }
            continue;
        }
        let b = match parsed {
            Ok(b) => b,
            Err(e) => {
                failures.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let module = String::from_utf8(unhex(fields[1])).expect("utf-8 module");
        if b.module() != module {
            failures.push(format!("{}: module {} vs beam_lib {module}", path.display(), b.module()));
        }
        if hex_upper(&b.md5()) != fields[2] {
            failures.push(format!("{}: md5 {} vs beam_lib {}", path.display(), hex_upper(&b.md5()), fields[2]));
        }
        let ours = our_line(&b);
        let theirs = erl_fields(&fields[3..]);
        for ((t1, a), (t2, e)) in ours.iter().zip(theirs.iter()) {
            assert_eq!(t1, t2);
            if a != e {
                failures.push(format!("{}: table {t1} differs\n ours {a:?}\n erl  {e:?}", path.display()));
            }
        }
        lambdas += b.lambdas().len();
        checked += 1;
    }
    assert!(failures.is_empty(), "{} of {n} files differ:\n{}", failures.len(), failures[..failures.len().min(10)].join("\n"));
    // Enough lambdas that the FunT comparison meant something.
    assert!(lambdas > 1000, "only {lambdas} lambdas in {checked} modules");
    eprintln!("{checked} beams ({gzipped} gzip), {lambdas} lambdas: MD5 and tables equal beam_lib's");
}

// ----- gzip-compressed files -----------------------------------------------------------------

const MODULE: &str = r#"
-module(dg_gz).
-export([f/1, g/0]).
f(X) -> fun(Y) -> {X, Y, <<"a literal">>, [1.5, "str"]} end.
g() -> [fun lists:sort/1, fun(A, B) -> A > B end].
"#;

#[test]
fn compressed_beams_have_the_same_md5() {
    let dir = TempDir::new("dg_beam_gz");
    let src = dir.path().join("dg_gz.erl");
    std::fs::write(&src, MODULE).unwrap();
    erl::compile(&[&src], dir.path()).unwrap();
    let plain = std::fs::read(dir.path().join("dg_gz.beam")).unwrap();
    let plain_md5 = parse_file(&plain).unwrap();

    // `erlc +compressed` (the compiler's own gzip), and zlib:gzip of OTP modules, by erl; erl
    // also reports beam_lib:md5 of each compressed file.
    let zdir = dir.path().join("z");
    std::fs::create_dir_all(&zdir).unwrap();
    let out = std::process::Command::new(erl::erlc_path())
        .args(["+compressed", "-o"])
        .arg(&zdir)
        .arg(&src)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let compressed = std::fs::read(zdir.join("dg_gz.beam")).unwrap();
    assert!(beam::is_gzip(&compressed), "erlc +compressed wrote a gzip file");
    assert_eq!(parse_file(&compressed).unwrap(), plain_md5);

    let expr = format!(
        "Dir = {}, \
         Ms = [lists, proplists, gen_server, erl_parse, dg_gz_none], \
         Lines = [begin P = code:which(M), B = zlib:gzip(element(2, file:read_file(P))), \
               Z = filename:join(Dir, atom_to_list(M) ++ \".beam\"), ok = file:write_file(Z, B), \
               {{ok, {{_, Md5}}}} = beam_lib:md5(Z), [Z, \" \", binary:encode_hex(Md5), \"\\n\"] end \
              || M <- Ms, is_list(code:which(M))], \
         io:format(\"~s\", [Lines])",
        erl::string_literal(&zdir.display().to_string())
    );
    let listing = erl::eval(&expr);
    let mut n = 0;
    for line in listing.lines() {
        let (path, md5) = line.split_once(' ').unwrap();
        let gz = std::fs::read(path).unwrap();
        assert!(beam::is_gzip(&gz));
        let (_, ours) = parse_file(&gz).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(hex_upper(&ours), md5, "{path}");
        n += 1;
    }
    assert_eq!(n, 4, "{listing}");
}

// ----- truncated, corrupt and hostile files --------------------------------------------------

/// A chunk's id, header offset, and end including padding.
type Span = ([u8; 4], usize, usize);

/// Chunk spans of a well-formed image.
fn spans(img: &[u8]) -> Vec<Span> {
    beam::chunks(img)
        .unwrap()
        .map(|c| {
            let c = c.unwrap();
            (c.id, c.offset, c.offset + 8 + c.data.len().div_ceil(4) * 4)
        })
        .collect()
}

#[test]
fn every_truncation_of_a_real_beam_names_the_cut_chunk() {
    let img = std::fs::read(otp_beam("proplists")).unwrap();
    assert!(!beam::is_gzip(&img));
    let full = parse_file(&img).unwrap();
    let spans = spans(&img);
    assert!(spans.len() >= 8, "{spans:?}");
    for n in 0..img.len() {
        // As cut: FOR1 now declares more than is there, and the error names the chunk the file
        // ends in (when it ends inside one's data).
        let e = Beam::parse(&img[..n]).unwrap_err();
        if n < 12 {
            assert!(matches!(e.kind, BeamErrorKind::Truncated { .. }), "cut at {n}: {e}");
            continue;
        }
        assert!(matches!(e.kind, BeamErrorKind::FormSize { .. }), "cut at {n}: {e}");
        let &(id, start, _) = spans.iter().find(|s| n >= s.1 && n < s.2).expect("cut inside the form");
        if n >= start + 8 {
            assert_eq!((e.chunk, e.offset), (Some(id), start), "cut at {n}: {e}");
        } else {
            assert_eq!(e.chunk, None, "cut at {n}: {e}");
        }
        // With FOR1 fixed to the cut, the chunk parser must name the chunk the cut fell in.
        let mut cut = img[..n].to_vec();
        cut[4..8].copy_from_slice(&((n - 8) as u32).to_be_bytes());
        let r = Beam::parse(&cut);
        match r {
            // Cut exactly between chunks: a complete (smaller) module, or a required chunk missing.
            _ if n == start => match r {
                Ok(b) => assert_eq!(b.module(), full.0),
                Err(e) => assert_eq!(e.kind, BeamErrorKind::Missing, "cut at {n}: {e}"),
            },
            Err(e) if n < start + 8 => {
                assert_eq!((e.offset, e.chunk), (start, None), "cut at {n} in a chunk header: {e}");
            }
            Err(e) => {
                assert_eq!((e.offset, e.chunk), (start, Some(id)), "cut at {n}: {e}");
                assert!(matches!(e.kind, BeamErrorKind::ChunkPastEnd { .. }));
            }
            Ok(_) => panic!("cut at {n} inside chunk {id:?} parsed"),
        }
    }
}

fn gzip_by_erl(path: &Path) -> Vec<u8> {
    let out = erl::eval(&format!(
        "{{ok, B}} = file:read_file({}), io:format(\"~s\", [binary:encode_hex(zlib:gzip(B))])",
        erl::string_literal(&path.display().to_string())
    ));
    unhex(out.trim())
}

#[test]
fn every_truncation_of_a_gzip_beam_is_an_error() {
    let path = otp_beam("proplists");
    let gz = gzip_by_erl(&path);
    let want = parse_file(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(parse_file(&gz).unwrap(), want);
    for n in 0..gz.len() {
        let e = parse_file(&gz[..n]).unwrap_err();
        // A cut gzip file is a gzip error (never a chunk error from half an image).
        assert_eq!(e.chunk, None, "cut at {n}: {e}");
    }
    // A flipped bit anywhere in the deflate data or the trailer is caught (CRC, size, or the
    // stream itself).
    for i in (10..gz.len()).step_by(7) {
        let mut bad = gz.clone();
        bad[i] ^= 0x10;
        assert!(parse_file(&bad).is_err(), "flip at {i} accepted");
    }
}

/// An image made of these chunks (padding added, FOR1's size right).
fn build(chunks: &[(&[u8; 4], Vec<u8>)]) -> Vec<u8> {
    beam::image_of_chunks(chunks)
}

/// Big-endian 32-bit words.
fn w(ws: &[u32]) -> Vec<u8> {
    ws.iter().flat_map(|x| x.to_be_bytes()).collect()
}

/// A small hostile file: a valid header and then chunks whose counts claim far more than is
/// there.
fn hostile_images() -> Vec<(&'static str, Vec<u8>)> {
    let base = |atoms: Vec<u8>, funt: Vec<u8>| {
        build(&[(b"AtU8", atoms), (b"Code", w(&[16])), (b"StrT", vec![]), (b"ImpT", w(&[0])), (b"ExpT", w(&[0])), (b"FunT", funt)])
    };
    let one_atom = || [w(&[1]), vec![1, b'm']].concat();
    vec![
        ("atom count 2^31-1", base([w(&[0x7fff_ffff]), vec![1, b'm']].concat(), w(&[0]))),
        ("compact atom count -(2^31-1)", base([w(&[0x8000_0001]), vec![0x10, b'm']].concat(), w(&[0]))),
        ("atom length past the end", base([w(&[1]), vec![200, b'm']].concat(), w(&[0]))),
        ("FunT count 2^28", base(one_atom(), w(&[0x1000_0000, 1, 1, 1, 1, 1, 1]))),
        ("FunT count -1", base(one_atom(), w(&[0xffff_ffff]))),
        ("chunk size 2^32-1", {
            let mut v = base(one_atom(), w(&[0]));
            v[16..20].copy_from_slice(&[0xff; 4]);
            v
        }),
        ("FOR1 size 2^32-1", {
            let mut v = base(one_atom(), w(&[0]));
            v[4..8].copy_from_slice(&[0xff; 4]);
            v
        }),
    ]
}

/// A gzip file of `data` whose trailer declares `isize`.
fn gzip(data: &[u8], isize: u32) -> Vec<u8> {
    let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    gz.extend_from_slice(&miniz_oxide::deflate::compress_to_vec(data, 6));
    gz.extend_from_slice(&beam::crc32(data).to_le_bytes());
    gz.extend_from_slice(&isize.to_le_bytes());
    gz
}

/// A gzip file whose trailer declares `isize` and whose deflate data inflates to `real` zeros.
fn gzip_of_zeros(real: usize, isize: u32) -> Vec<u8> {
    gzip(&vec![0u8; real], isize)
}

#[test]
fn hostile_files_fail_cleanly_and_cost_little_memory() {
    for (what, img) in hostile_images() {
        let (r, peak) = peak_during(|| parse_file(&img));
        let e = r.expect_err(what);
        assert!(e.chunk.is_some() || matches!(e.kind, BeamErrorKind::FormSize { .. }), "{what}: {e}");
        // Nothing was reserved from a declared count: a few KB at most (the error path
        // allocates nothing proportional to what the file claims).
        assert!(peak < 16 << 10, "{what}: {peak} bytes for a {}-byte file", img.len());
    }

    // A decompression bomb that says so: 64 MiB of zeros in ~64 KB, read with a 1 MiB cap, is
    // refused from its trailer before inflating.
    let cap = 1 << 20;
    let bomb = gzip_of_zeros(64 << 20, (64u32) << 20);
    let mut scratch = Vec::new();
    let (r, peak) = peak_during(|| beam::image(&bomb, &mut scratch, cap).map(|i| i.len()));
    assert!(matches!(r.unwrap_err().kind, BeamErrorKind::InflateTooLarge { .. }));
    drop(scratch);
    assert!(peak < 2 * cap + (64 << 10), "bomb cost {peak} bytes with a cap of {cap}");
    // One that lies (the trailer claims the cap, the data inflates to 8 MiB): the output buffer
    // grows by doubling up to the cap and stops there, never near the bomb's real size.
    let bomb = gzip_of_zeros(8 << 20, cap as u32);
    let mut scratch = Vec::new();
    let (r, peak) = peak_during(|| beam::image(&bomb, &mut scratch, cap).map(|i| i.len()));
    assert!(r.is_err());
    drop(scratch);
    assert!(peak < 2 * cap + (64 << 10), "lying trailer cost {peak} bytes");
    // A tiny stream whose trailer claims just under the cap: the claim is not trusted beyond
    // what deflate's ratio allows for the bytes present.
    let small = gzip_of_zeros(10, (cap - 1) as u32);
    let mut scratch = Vec::new();
    let (r, peak) = peak_during(|| beam::image(&small, &mut scratch, cap).map(|i| i.len()));
    assert!(r.is_err());
    drop(scratch);
    assert!(peak < 64 << 10, "a {}-byte file with a lying size cost {peak} bytes", small.len());
}

/// A valid module whose tables hold millions of entries that each cost the file next to
/// nothing, gzip-compressed as a registry directory or a live node could hand it over.
struct Cheap {
    what: &'static str,
    /// The inflated image.
    image: Vec<u8>,
    /// The last atom (the table's size is `atoms`).
    last_atom: &'static str,
    atoms: u32,
    /// Entries in each of ImpT, ExpT, LocT and FunT.
    entries: usize,
    /// The MD5 worked out here from the chunks.
    md5: [u8; 16],
    /// What parsing may cost beyond the image itself, as a multiple of the image.
    extra: f64,
}

fn cheap_entry_images() -> Vec<Cheap> {
    use md5::{Digest, Md5};
    // Chunks in the MD5's order (Atom/AtU8, Code, StrT, ImpT, ExpT, FunT; LocT is not hashed).
    let module = |atom_id: &[u8; 4], atoms: Vec<u8>, n: usize, entries: usize| {
        let code = w(&[16]);
        let imp = [w(&[entries as u32]), w(&[1, 2, 0]).repeat(entries)].concat();
        let exp = [w(&[entries as u32]), w(&[2, 0, 1]).repeat(entries)].concat();
        let loc = [w(&[entries as u32]), w(&[2, 1, 1]).repeat(entries)].concat();
        let fun = [w(&[entries as u32]), w(&[2, 0, 1, 0, 0, 0]).repeat(entries)].concat();
        let mut h = Md5::new();
        for c in [&atoms, &code, &imp, &exp, &fun] {
            h.update(c);
        }
        let md5: [u8; 16] = h.finalize().into();
        assert!(n >= 2);
        let image = build(&[
            (atom_id, atoms),
            (b"Code", code),
            (b"StrT", vec![]),
            (b"ImpT", imp),
            (b"ExpT", exp),
            (b"LocT", loc),
            (b"FunT", fun),
        ]);
        (image, md5)
    };
    let mut out = Vec::new();
    // The reviewer's file: "m", "f", then millions of empty atoms ('' is a legal atom, and the
    // loader takes it any number of times), each one byte of the image.
    let n = 8_000_000usize;
    let atoms = [w(&[n as u32]), vec![1, b'm', 1, b'f'], vec![0; n - 2]].concat();
    let (image, md5) = module(b"AtU8", atoms, n, 1);
    out.push(Cheap { what: "8M empty atoms (AtU8)", image, last_atom: "", atoms: n as u32, entries: 1, md5, extra: 0.5 });
    // The same in OTP 28's form: a negative count and compact lengths (0x00: 0, tag u).
    let atoms = [w(&[(n as i32).wrapping_neg() as u32]), vec![0x10, b'm', 0x10, b'f'], vec![0; n - 2]].concat();
    let (image, md5) = module(b"AtU8", atoms, n, 1);
    out.push(Cheap { what: "8M empty atoms (AtU8, compact lengths)", image, last_atom: "", atoms: n as u32, entries: 1, md5, extra: 0.5 });
    // Latin-1 (pre-OTP-21 "Atom"): one-character atoms beyond ASCII, two bytes each, whose text
    // must be re-encoded to be handed out as UTF-8.
    let n = 4_000_000usize;
    let atoms = [w(&[n as u32]), vec![1, b'm', 1, b'f'], [1u8, 0xe9].repeat(n - 2)].concat();
    let (image, md5) = module(b"Atom", atoms, n, 1);
    out.push(Cheap { what: "4M one-character Latin-1 atoms", image, last_atom: "é", atoms: n as u32, entries: 1, md5, extra: 2.0 });
    // Every other table: ImpT, ExpT, LocT and FunT with 2^19 entries each (30 MB inflated).
    let e = 1 << 19;
    let (image, md5) = module(b"AtU8", [w(&[2]), vec![1, b'm', 1, b'f']].concat(), 2, e);
    out.push(Cheap { what: "2^19 entries in each of ImpT, ExpT, LocT, FunT", image, last_atom: "f", atoms: 2, entries: e, md5, extra: 0.5 });
    out
}

#[test]
fn millions_of_cheap_entries_cost_a_fraction_of_the_image() {
    for c in cheap_entry_images() {
        let gz = gzip(&c.image, c.image.len() as u32);
        assert!(gz.len() < c.image.len() / 100, "{}: {} bytes compressed", c.what, gz.len());
        let ((r, scratch), peak) = peak_during(|| {
            let mut scratch = Vec::new();
            let r = beam::image(&gz, &mut scratch, beam::DEFAULT_MAX_IMAGE).and_then(Beam::parse).map(|b| {
                let counts = [b.imports().len(), b.exports().len(), b.locals().len(), b.lambdas().len()];
                (b.module().to_owned(), b.md5(), b.atom(c.atoms).map(str::to_owned), b.atom(c.atoms + 1).is_none(), counts)
            });
            (r, scratch.len())
        });
        // These are valid modules: they parse, and parse right.
        let (module, md5, last, past_end, counts) = r.unwrap_or_else(|e| panic!("{}: {e}", c.what));
        assert_eq!(scratch, c.image.len(), "{}", c.what);
        assert_eq!(module, "m", "{}", c.what);
        assert_eq!(md5, c.md5, "{}", c.what);
        assert_eq!(last.as_deref(), Some(c.last_atom), "{}", c.what);
        assert!(past_end, "{}", c.what);
        assert_eq!(counts, [c.entries; 4], "{}", c.what);
        // The image is what the file costs (bounded by the cap); the parse adds no allocation per
        // atom or entry beyond a fraction of it.
        let allowed = c.image.len() + (c.image.len() as f64 * c.extra) as usize + (64 << 10);
        eprintln!("{}: {}-byte image ({} gzipped), peak {peak} bytes", c.what, c.image.len(), gz.len());
        assert!(
            peak < allowed,
            "{}: {peak} bytes at the peak for a {}-byte image ({} bytes gzipped); at most {allowed}",
            c.what,
            c.image.len(),
            gz.len()
        );
    }
}

/// Overwrite a 32-bit word at a chunk-structural position (FOR1 size, a chunk size, a table
/// count) or a random position with a value from a hostile set.
fn mutate(img: &[u8], spans: &[Span], pick: usize, at: usize, value: u32) -> Vec<u8> {
    let mut v = img.to_vec();
    let pos = match pick % 4 {
        0 => 4,
        1 => spans[at % spans.len()].1 + 4,
        2 => spans[at % spans.len()].1 + 8,
        _ => at % (v.len() - 4),
    };
    if pos + 4 <= v.len() {
        v[pos..pos + 4].copy_from_slice(&value.to_be_bytes());
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]
    #[test]
    fn mutated_real_beams_never_panic(
        pick in 0usize..8,
        at in any::<usize>(),
        value in prop_oneof![Just(0u32), Just(1), Just(0x7fff_ffff), Just(0x8000_0000), Just(0xffff_ffff), any::<u32>()],
        flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..4),
    ) {
        use std::sync::OnceLock;
        static IMG: OnceLock<(Vec<u8>, Vec<Span>)> = OnceLock::new();
        let (img, spans) = IMG.get_or_init(|| {
            let img = std::fs::read(otp_beam("proplists")).unwrap();
            let s = spans(&img);
            (img, s)
        });
        let mut v = mutate(img, spans, pick, at, value);
        for (i, x) in flips {
            let n = v.len();
            v[i % n] ^= x;
        }
        // Must return (either way) without panicking; when it parses, every accessor works.
        if let Ok(b) = Beam::parse(&v) {
            let _ = b.md5();
            for e in b.exports().chain(b.locals()) {
                prop_assert!(b.atom(e.function).is_some());
            }
            for l in b.lambdas() {
                prop_assert!(b.atom(l.function).is_some());
            }
            for i in b.imports() {
                prop_assert!(b.atom(i.module).is_some() && b.atom(i.function).is_some());
            }
        }
    }
}
