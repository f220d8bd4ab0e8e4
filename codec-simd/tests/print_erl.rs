//! Differential test of `print::format_versioned` against a real Erlang/OTP node.
//!
//! An inline Erlang module generates thousands of random terms (no pids, ports or references;
//! funs only in the deterministic edge cases, where their text is node-independent) plus fixed
//! edge cases, encodes each with `term_to_binary/2` under five option sets, and writes the
//! bytes and `io_lib:format("~w", [T])` to a file. Every encoding must print exactly erl's text.
//!
//! Requires `erl` and `erlc` (OTP 25) on `PATH`: without them the test fails, it does not skip.
//! `PRINT_ERL_SEED` and `PRINT_ERL_TERMS` override the random seed and the number of random
//! terms (defaults 20250101 and 3000).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use distgate_codec::print::{format_term, format_versioned};
use distgate_codec::{ErrorKind, Limits, Walker};

const OPTION_NAMES: [&str; 5] =
    ["[]", "[compressed]", "[{minor_version,0}]", "[{minor_version,1}]", "[{minor_version,2}]"];

const GEN_ERL: &str = r#"
-module(print_erl_gen).
-export([main/1, local_funs/0]).

main([Out, SeedS, NS]) ->
    Seed = list_to_integer(SeedS),
    N = list_to_integer(NS),
    rand:seed(exsss, {Seed, Seed * 7 + 1, Seed * 13 + 5}),
    Terms = edge_terms() ++ [term(4) || _ <- lists:seq(1, N)] ++ float_batches(),
    Opts = [[], [compressed], [{minor_version, 0}], [{minor_version, 1}], [{minor_version, 2}]],
    {ok, F} = file:open(Out, [write, raw, binary, delayed_write]),
    lists:foreach(
      fun(T) ->
              Text = unicode:characters_to_binary(io_lib:format("~w", [T])),
              lists:foreach(
                fun({I, O}) ->
                        B = term_to_binary(T, O),
                        ok = file:write(F, [<<I:8, (byte_size(B)):32>>, B,
                                            <<(byte_size(Text)):32>>, Text])
                end, lists:zip(lists:seq(0, 4), Opts))
      end, Terms),
    ok = file:close(F),
    halt(0).

pick(T) -> element(rand:uniform(tuple_size(T)), T).
sign() -> case rand:uniform(2) of 1 -> 1; 2 -> -1 end.
seq(N) -> lists:seq(1, N).

%% ---- random terms ----------------------------------------------------------------------

term(0) -> leaf();
term(D) ->
    case rand:uniform(13) of
        N when N =< 5 -> leaf();
        6 -> list_to_tuple([term(D - 1) || _ <- seq(rand:uniform(6) - 1)]);
        7 -> [term(D - 1) || _ <- seq(rand:uniform(6) - 1)];
        8 -> improper(D);
        9 -> small_map(D);
        10 -> case rand:uniform(3) of 1 -> big_map(D); _ -> small_map(D) end;
        11 -> case rand:uniform(8) of
                  1 -> list_to_tuple([leaf() || _ <- seq(250 + rand:uniform(300))]);
                  _ -> {term(D - 1), term(D - 1)}
              end;
        12 -> [leaf() || _ <- seq(rand:uniform(40))];
        13 -> bytes_list()
    end.

improper(D) ->
    Elems = [term(D - 1) || _ <- seq(rand:uniform(4))],
    lists:foldr(fun(E, Acc) -> [E | Acc] end, non_list(D), Elems).

non_list(D) ->
    case rand:uniform(7) of
        1 -> int(); 2 -> float(); 3 -> atom(); 4 -> binary(); 5 -> bitstring();
        6 -> {term(D - 1)}; 7 -> small_map(D - 1)
    end.

key(D) ->
    case rand:uniform(6) of
        1 -> {leaf(), leaf()};
        2 when D > 0 -> term(D - 1);
        _ -> leaf()
    end.

small_map(D) when D =< 0 -> #{};
small_map(D) ->
    maps:from_list([{key(D), term(D - 1)} || _ <- seq(rand:uniform(8) - 1)]).

big_map(D) ->
    Extra = [{key(D), term(D - 1)} || _ <- seq(rand:uniform(40))],
    M = maps:from_list([{I, term(D - 1)} || I <- seq(33)] ++ Extra),
    case rand:uniform(3) of
        1 -> M;
        _ -> maps:from_list([{K, V} || {K, V} <- maps:to_list(M), rand:uniform(4) > 1]
                            ++ [{{k, I}, leaf()} || I <- seq(33)])
    end.

leaf() ->
    case rand:uniform(11) of
        1 -> int(); 2 -> int(); 3 -> float(); 4 -> atom(); 5 -> atom();
        6 -> binary(); 7 -> bitstring(); 8 -> []; 9 -> bytes_list(); 10 -> {};
        11 -> #{}
    end.

int() ->
    case rand:uniform(7) of
        1 -> rand:uniform(256) - 1;
        2 -> rand:uniform(1 bsl 32) - (1 bsl 31);
        3 -> rand:uniform(1 bsl 62) * sign();
        4 -> big(rand:uniform(300));
        5 -> big(rand:uniform(8));
        6 -> -rand:uniform(300);
        7 -> pick(edge_ints())
    end.

big(Bytes) -> binary:decode_unsigned(rand:bytes(Bytes), little) * sign().

float() ->
    case rand:uniform(8) of
        1 -> bits_float(rand:uniform(2047) - 1);
        2 -> bits_float(1023 + rand:uniform(160) - 80);
        3 -> list_to_float(integer_to_list(rand:uniform(99999)) ++ ".0e"
                           ++ integer_to_list(rand:uniform(50) - 25)) * sign();
        4 -> list_to_float(integer_to_list(rand:uniform(99999999999999999)) ++ ".0e"
                           ++ integer_to_list(rand:uniform(80) - 40)) * sign();
        5 -> float((1 bsl 53) + rand:uniform(200) - 100) * pick({1, 2, 10, 100, 0.5}) * sign();
        6 -> bits_float(0);
        7 -> pick(edge_floats());
        8 -> float(rand:uniform(1 bsl rand:uniform(62))) * sign()
    end.

bits_float(E) ->
    <<F/float>> = <<(rand:uniform(2) - 1):1, E:11, (rand:uniform(1 bsl 52) - 1):52>>,
    F.

atom() ->
    case rand:uniform(8) of
        1 -> pick(edge_atoms());
        _ -> list_to_atom([char() || _ <- seq(rand:uniform(12) - 1)])
    end.

char() ->
    case rand:uniform(10) of
        N when N =< 4 -> $a + rand:uniform(26) - 1;
        5 -> $A + rand:uniform(26) - 1;
        6 -> $0 + rand:uniform(10) - 1;
        7 -> pick({$_, $@, $., $\s, $', $\\, $", $\n, $\t, 0, 27, 127, $-, $+, 128, 159, 160});
        8 -> rand:uniform(256) - 1;
        9 -> 16#C0 + rand:uniform(64) - 1;
        10 -> unicode_char()
    end.

unicode_char() ->
    C = 16#100 + rand:uniform(16#10FFFF - 16#100),
    if C >= 16#D800, C =< 16#DFFF -> unicode_char(); true -> C end.

binary() ->
    case rand:uniform(10) of
        1 -> rand:bytes(rand:uniform(2000));
        _ -> rand:bytes(rand:uniform(20) - 1)
    end.

bitstring() ->
    B = rand:bytes(rand:uniform(4) - 1),
    Bits = rand:uniform(7),
    <<B/binary, (rand:uniform(1 bsl Bits) - 1):Bits>>.

bytes_list() ->
    case rand:uniform(4) of
        1 -> [rand:uniform(1000) - 1 || _ <- seq(rand:uniform(10))];
        _ -> [rand:uniform(256) - 1 || _ <- seq(rand:uniform(11) - 1)]
    end.

float_batches() ->
    [[float() || _ <- seq(100)] || _ <- seq(400)].

%% ---- fixed edge cases ------------------------------------------------------------------

edge_ints() ->
    {0, 1, 255, 256, -1, -255, -256, 134217727, 134217728, -134217728, -134217729,
     2147483647, 2147483648, -2147483648, -2147483649, 1 bsl 32, (1 bsl 59) - 1, 1 bsl 59,
     -(1 bsl 59), 1 bsl 63, (1 bsl 64) - 1, 1 bsl 64, -(1 bsl 64), (1 bsl 2040) - 1,
     1 bsl 2040, -(1 bsl 2040), 1 bsl 8000, -(1 bsl 5000) + 1, pow10(300), -pow10(300),
     pow10(19), pow10(18) - 1, pow10(27) + 1}.

pow10(0) -> 1;
pow10(N) -> 10 * pow10(N - 1).

edge_floats() ->
    <<NegZero/float>> = <<1:1, 0:63>>,
    <<MinSub/float>> = <<0:1, 0:11, 1:52>>,
    <<MaxSub/float>> = <<0:1, 0:11, -1:52>>,
    <<MinNorm/float>> = <<0:1, 1:11, 0:52>>,
    <<Max/float>> = <<0:1, 2046:11, -1:52>>,
    {0.0, NegZero, MinSub, -MinSub, MaxSub, MinNorm, Max, -Max, 1.0, -1.0, 0.1, 0.01, 0.001,
     0.0001, 0.00001, 1.0e-6, 1.0e-7, 1.5e-5, 1.234e-3, 123.456, 1.0e15, 1.0e16, 1.0e17,
     1.0e20, 1.0e21, 1.0e22, 1.0e23, 123456789012345680.0, 12345678901234567.0,
     1234567890123456.0, 9007199254740992.0, 9007199254740994.0, 9007199254740990.0,
     9007199254741000.0, 4503599627370496.0, 4503599627370497.0, 0.3, 2.0 / 3, 1.0e-10,
     1.5e-10, 100.0, 1000.0, 10.0, 12340.0, 123400.0, 1.0e9, 1.0e10, 1.2345e10,
     12345678900.0, 123456789000.0, 1234567890.0, 0.00012345, 0.000012345, 0.00123,
     0.000123, 123456789.123, 1.0e-300, 7.0e-5, 99999999999999999.0, 900719925474099.0,
     9007199254740.99, 90071992547409.9, 5.0e-324, 2.2250738585072014e-308,
     1.7976931348623157e308, 0.5, 0.25, 1.0e100, 1.0e-100, 3.14159}.

edge_atoms() ->
    {'after', 'and', 'andalso', 'band', 'begin', 'bnot', 'bor', 'bsl', 'bsr', 'bxor', 'case',
     'catch', 'cond', 'div', 'end', 'fun', 'if', 'let', 'not', 'of', 'or', 'orelse',
     'receive', 'rem', 'try', 'when', 'xor', maybe, else, spec, 'ANDALSO', '', 'a b', 'a\'b',
     'a\\b', 'a"b', 'A', '_a', '1a', a1, 'a@b', 'a.b', 'node@host', 'Node@host', ok, true,
     list_to_atom([1, 2, 7, 8, 9, 10, 11, 12, 13, 27, 31, 127, 128, 159, 160, 255]),
     list_to_atom([16#DF]), list_to_atom([16#FF, $a]), list_to_atom([16#F7]),
     list_to_atom([$a, 16#C0]), list_to_atom([$a, 16#D7]), list_to_atom([$a, 16#DE]),
     list_to_atom([$a, 16#F7]), list_to_atom([16#AA]), list_to_atom([$a, 16#B5]),
     list_to_atom([16#E9]), list_to_atom([16#109]), list_to_atom([$a, 16#1F600]),
     list_to_atom([16#3B1, 16#3B2]), list_to_atom([$a, 16#FFFF]),
     list_to_atom(lists:duplicate(255, $z)), list_to_atom(lists:duplicate(255, 16#1F600)),
     list_to_atom(lists:duplicate(255, 16#E9))}.

local_funs() ->
    X = {1, [2, 3], #{a => b}},
    Y = <<"free">>,
    [fun() -> ok end, fun(A) -> A end, fun() -> X end, fun(A, B) -> {A, B, X, Y} end].

edge_terms() ->
    Atoms = tuple_to_list(edge_atoms()),
    Latin1 = [list_to_atom([C]) || C <- lists:seq(0, 255)]
        ++ [list_to_atom([$a, C]) || C <- lists:seq(0, 255)],
    Nested = fun(Wrap, Depth) -> lists:foldl(fun(_, A) -> Wrap(A) end, [], seq(Depth)) end,
    BigMap = maps:from_list([{I, I} || I <- seq(40)]),
    Funs = [fun lists:map/2, fun erlang:'+'/2, erlang:make_fun('A', 'b c', 0),
            erlang:make_fun('end', 'receive', 1), erlang:make_fun('a@b', f, 3),
            erlang:make_fun('a.b', '', 255),
            erlang:make_fun(list_to_atom([16#E9]), list_to_atom([16#109]), 2),
            erlang:make_fun(list_to_atom([16#DF, 16#C0, $_]), list_to_atom([$a, 16#1F600]), 2),
            erlang:make_fun(list_to_atom([1, 27, 127, 128, 159, 160, $', $\\, $\n]), x, 0)]
        ++ local_funs(),
    [Atoms, Latin1, Funs, {Funs, #{f => Funs}}
     | tuple_to_list(edge_ints()) ++ tuple_to_list(edge_floats()) ++ Atoms ++ Funs]
    ++ [[], "hi", [1, 2 | 3], [a, b | c], [[] | []], [a | <<1>>], [a | #{}], [[a] | {}],
        [1 | 2.5], "", [0, 255, 256], lists:seq(1, 300),
        [I rem 256 || I <- seq(65535)], [I rem 256 || I <- seq(70000)],
        <<>>, <<1, 2, 3>>, <<1, 2:3>>, <<5:3>>, <<255, 7:4>>, <<0:1>>, <<1:7>>,
        <<0:8, 1:1>>, rand:bytes(70000), [<<1:1>>, <<>>, <<0:7>>],
        {}, #{}, #{a => 1, [b] => {2}},
        maps:from_list([{I, I} || I <- seq(32)]), maps:from_list([{I, I} || I <- seq(33)]),
        BigMap, maps:from_list([{I, x} || I <- seq(1000)]),
        #{BigMap => BigMap, {BigMap} => [BigMap], x => #{BigMap => #{}}},
        maps:from_list([{I, BigMap} || I <- seq(40)]),
        maps:from_list([{maps:from_list([{J, I} || J <- seq(33)]), I} || I <- seq(35)]),
        #{#{a => 1} => #{}, #{} => [#{}]},
        list_to_tuple(seq(255)), list_to_tuple(seq(256)), list_to_tuple(seq(70000)),
        Nested(fun(A) -> [A] end, 3000), Nested(fun(A) -> {A} end, 3000),
        Nested(fun(A) -> #{A => A} end, 12), Nested(fun(A) -> [x | A] end, 3000),
        Nested(fun(A) -> [A | x] end, 3000), Nested(fun(A) -> #{k => A} end, 2000),
        Nested(fun(A) -> maps:put(k, A, BigMap) end, 200)].
"#;

/// One encoding and erl's text for it.
struct Case {
    option: u8,
    bytes: Vec<u8>,
    text: String,
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| {
        panic!(
            "cannot run {what} ({e}): this test needs Erlang/OTP 25 (`erl` and `erlc`) on PATH; \
             it does not skip when they are missing"
        )
    });
    assert!(
        out.status.success(),
        "{what} failed with {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn be32(b: &[u8], at: &mut usize) -> usize {
    let v = u32::from_be_bytes(b[*at..*at + 4].try_into().unwrap()) as usize;
    *at += 4;
    v
}

fn read_cases(path: &Path) -> Vec<Case> {
    let data = std::fs::read(path).expect("generator output");
    let mut cases = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let option = data[at];
        at += 1;
        let n = be32(&data, &mut at);
        let bytes = data[at..at + n].to_vec();
        at += n;
        let n = be32(&data, &mut at);
        let text = String::from_utf8(data[at..at + n].to_vec()).expect("erl text is UTF-8");
        at += n;
        cases.push(Case { option, bytes, text });
    }
    cases
}

fn clip(s: &str, around: usize) -> String {
    let chars: Vec<char> = s.chars().collect();
    let from = around.saturating_sub(60);
    let to = (around + 60).min(chars.len());
    let mut out = String::new();
    if from > 0 {
        out.push('…');
    }
    out.extend(&chars[from..to]);
    if to < chars.len() {
        out.push('…');
    }
    out
}

fn hex_head(b: &[u8]) -> String {
    let mut s = String::new();
    for x in b.iter().take(48) {
        let _ = write!(s, "{x:02x}");
    }
    if b.len() > 48 {
        let _ = write!(s, "… ({} bytes)", b.len());
    }
    s
}

struct TempDir(PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn format_versioned_matches_erl_w() {
    let seed: u64 = std::env::var("PRINT_ERL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20250101);
    let terms: usize = std::env::var("PRINT_ERL_TERMS").ok().and_then(|s| s.parse().ok()).unwrap_or(3000);
    let dir = TempDir(std::env::temp_dir().join(format!("distgate-print-erl-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let src = dir.0.join("print_erl_gen.erl");
    std::fs::write(&src, GEN_ERL).unwrap();
    run(Command::new("erlc").arg("-o").arg(&dir.0).arg(&src), "erlc");
    let out = dir.0.join("cases.bin");
    run(
        Command::new("erl")
            .args(["-noshell", "-pa"])
            .arg(&dir.0)
            .args(["-run", "print_erl_gen", "main"])
            .arg(&out)
            .arg(seed.to_string())
            .arg(terms.to_string()),
        "erl (term generator)",
    );
    let cases = read_cases(&out);
    assert!(cases.len() >= 5 * 2000, "only {} encodings generated", cases.len());

    let mut failures = Vec::new();
    let mut per_option = [0usize; 5];
    for (i, c) in cases.iter().enumerate() {
        per_option[c.option as usize] += 1;
        let got = format_versioned(&c.bytes);
        let ok = matches!(&got, Ok(s) if *s == c.text);
        if !ok {
            failures.push((i, got));
        }
    }
    if !failures.is_empty() {
        let mut report = format!(
            "{} of {} encodings print differently from erl's ~w (seed {seed}); first ones:\n",
            failures.len(),
            cases.len()
        );
        for (i, got) in failures.iter().take(12) {
            let c = &cases[*i];
            let _ = writeln!(
                report,
                "--- case {i} (term {}), term_to_binary(T, {}):",
                i / 5,
                OPTION_NAMES[c.option as usize]
            );
            let _ = writeln!(report, "    bytes: {}", hex_head(&c.bytes));
            match got {
                Ok(s) => {
                    let at = s.chars().zip(c.text.chars()).take_while(|(a, b)| a == b).count();
                    let _ = writeln!(report, "    first difference at char {at}");
                    let _ = writeln!(report, "    erl:  {}", clip(&c.text, at));
                    let _ = writeln!(report, "    ours: {}", clip(s, at));
                }
                Err(e) => {
                    let _ = writeln!(report, "    erl:  {}", clip(&c.text, 0));
                    let _ = writeln!(report, "    ours: error {e}");
                }
            }
        }
        panic!("{report}");
    }
    eprintln!("print_erl: {} encodings match erl ({:?} per option set), seed {seed}", cases.len(), per_option);
}

/// `[[[…[]…]]]` nested `depth` deep, versioned.
fn nested_list(depth: usize) -> Vec<u8> {
    let mut b = Vec::with_capacity(6 * depth + 2);
    b.push(131);
    for _ in 0..depth {
        b.extend([108, 0, 0, 0, 1]);
    }
    b.push(106);
    b.resize(b.len() + depth, 106);
    b
}

#[test]
fn million_deep_list_does_not_overflow() {
    let depth = 1_000_000;
    let b = nested_list(depth);
    // Default limits: refused, cleanly.
    let e = format_versioned(&b).unwrap_err();
    assert_eq!(e.kind, ErrorKind::TooDeep { limit: Limits::default().max_depth });
    // Limit raised: printed, without recursion.
    let mut w = Walker::new(Limits { max_depth: depth + 1, ..Limits::default() });
    let (s, end) = format_term(&b[1..], 0, &(), &mut w).unwrap();
    assert_eq!(end, b.len() - 1);
    assert_eq!(s.len(), 2 * depth + 2);
    assert!(s[..depth].bytes().all(|c| c == b'['));
    assert_eq!(&s[depth..depth + 2], "[]");
    assert!(s[depth + 2..].bytes().all(|c| c == b']'));
}
