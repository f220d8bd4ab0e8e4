%% dg_gen: random Erlang terms for codec tests (see testkit::corpus).
%%
%% write_corpus(Seed, Count, File) writes Count terms, each encoded in every
%% variant of variants/0, to File. The first terms are fixed edge cases (so
%% every external-format tag erl emits shows up even for small counts), the
%% rest are random from rand's exsss algorithm seeded with Seed.
%%
%% File format (big-endian), read by testkit::corpus:
%%   "DGC1" then per term:
%%   HasOpaque:8 WLen:32 W CanonicalLen:32 Canonical NumVariants:8
%%   NumVariants x (VariantLen:8 Variant BytesLen:32 Bytes)
%% where W is the UTF-8 text of lists:flatten(io_lib:format("~w", [T])) and
%% Canonical that of w_canonical/1, or empty (length 0) when equal to W.
%%
%% This module is compiled by erlc, so the funs it builds are real local funs
%% of a real module (NEW_FUN_EXT with this module's MD5).
-module(dg_gen).

-export([write_corpus/3, terms/2, fixed_terms/0, variants/0, has_opaque/1,
         w/1, w_canonical/1, local_function/1]).

variants() ->
    [{"default", []},
     {"compressed", [compressed]},
     {"minor_version_1", [{minor_version, 1}]},
     {"minor_version_2", [{minor_version, 2}]},
     {"minor_version_0", [{minor_version, 0}]}].

write_corpus(Seed, Count, File) ->
    Terms = terms(Seed, Count),
    ok = file:write_file(File, [<<"DGC1">> | [record(T) || T <- Terms]]).

record(T) ->
    W = w(T),
    Canonical = case w_canonical(T) of W -> <<>>; C -> C end,
    Opaque = case has_opaque(T) of true -> 1; false -> 0 end,
    Variants = variants(),
    [<<Opaque:8, (byte_size(W)):32>>, W, <<(byte_size(Canonical)):32>>, Canonical,
     <<(length(Variants)):8>>
     | [begin
            NameB = list_to_binary(Name),
            Bytes = term_to_binary(T, Opts),
            [<<(byte_size(NameB)):8>>, NameB, <<(byte_size(Bytes)):32>>, Bytes]
        end || {Name, Opts} <- Variants]].

%% The ~w text of T as UTF-8 (atoms may hold any code point).
w(T) ->
    unicode:characters_to_binary(lists:flatten(io_lib:format("~w", [T]))).

%% Like w/1, except that map pairs are always printed in key order.
%%
%% Why: ~w prints a map of more than 32 keys (a HAMT) in its internal hash
%% order, and in OTP 25 that order differs between VM instances (verified:
%% the same bytes decoded by another erl print their pairs in another order),
%% so ~w of a large map is only reproducible inside the VM that printed it.
%% Key order is what ~w already uses for maps of up to 32 keys (integers
%% before floats, as erts_internal:cmp_term/2 orders them), so for any term
%% without a large map this is exactly w/1; and it is the same in every VM.
w_canonical(T) ->
    unicode:characters_to_binary(wc(T)).

wc([]) -> "[]";
wc([H | T]) -> [$[, wc(H), wtail(T), $]];
wc(T) when is_tuple(T) -> [${, join([wc(E) || E <- tuple_to_list(T)]), $}];
wc(M) when is_map(M) ->
    Pairs = lists:sort(fun({A, _}, {B, _}) -> cmp_term(A, B) =< 0 end, maps:to_list(M)),
    [$#, ${, join([[wc(K), " => ", wc(V)] || {K, V} <- Pairs]), $}];
wc(T) -> io_lib:write(T).

wtail([]) -> [];
wtail([H | T]) -> [$,, wc(H) | wtail(T)];
wtail(Improper) -> [$|, wc(Improper)].

join([]) -> [];
join([H | T]) -> [H | [[$,, E] || E <- T]].

%% Map key order: like the standard term order, but exact (1 < 1.0).
cmp_term(A, B) -> erts_internal:cmp_term(A, B).

terms(Seed, Count) ->
    _ = rand:seed(exsss, Seed),
    Fixed = fixed_terms(),
    case Count =< length(Fixed) of
        true -> lists:sublist(Fixed, Count);
        false -> Fixed ++ [top() || _ <- lists:seq(1, Count - length(Fixed))]
    end.

%% Large items (long strings, big binaries) only at the top level and rarely,
%% so the corpus stays a few megabytes while still containing them.
%%
%% Only half of the random terms may contain opaque values (pids,
%% ports, refs, funs): with them in every leaf position, most nested terms
%% would hold one, and tests that compare printed text (which for opaque
%% values is VM-specific) would have too few terms left to compare.
top() ->
    put(dg_opaque_ok, rand:uniform(2) =:= 1),
    case rand:uniform(150) of
        1 -> lists:duplicate(65536 + rand:uniform(100), $s);   % too long for STRING_EXT
        2 -> rand:bytes(65536 + rand:uniform(70000));
        3 -> {big, [rand:uniform(1 bsl 20) || _ <- seq(70000)]};  % long LIST_EXT of ints
        _ -> gen(4)
    end.

%% Does T contain a pid, port, reference or fun (terms whose identity is
%% node-bound and that a codec usually treats as opaque)?
has_opaque(T) when is_pid(T); is_port(T); is_reference(T); is_function(T) -> true;
has_opaque([H | T]) -> has_opaque(H) orelse has_opaque(T);
has_opaque(T) when is_tuple(T) -> lists:any(fun has_opaque/1, tuple_to_list(T));
has_opaque(T) when is_map(T) ->
    lists:any(fun({K, V}) -> has_opaque(K) orelse has_opaque(V) end, maps:to_list(T));
has_opaque(_) -> false.

%% --- fixed edge cases: at least one of every tag ---

fixed_terms() ->
    Free = {captured, 1, <<"x">>},
    [0, 255, 256, -1, 16#7FFFFFFF, -16#80000000, 16#80000000, -16#80000001,
     1 bsl 64, -(1 bsl 64),
     (1 bsl 2040) - 1,                       % 255 bytes: still SMALL_BIG
     1 bsl 2040, -(1 bsl 4000),              % > 255 bytes: LARGE_BIG
     0.0, neg_zero(), 1.5, -2.5e-300, 5.0e-324, 2.2250738585072014e-308,
     1.7976931348623157e308, -1.7976931348623157e308, 0.1, 1.0e22,
     a, '', 'A', 'hello world', 'it\'s', 'é', 'Ωμέγα', '日本', '😀',
     list_to_atom(lists:duplicate(255, $a)),
     list_to_atom(lists:duplicate(255, 16#E9)),   % 255 Latin-1 chars
     list_to_atom(lists:duplicate(255, 16#3A9)),  % 255 chars, 510 UTF-8 bytes
     list_to_atom(lists:duplicate(255, 16#1F600)), % 1020 UTF-8 bytes
     true, false, undefined,
     [], "abc", lists:seq(0, 255), "héllo", [16#3A9, 16#1F600],
     lists:duplicate(65535, $z),             % longest STRING_EXT
     lists:duplicate(65536, $z),             % one more: LIST_EXT
     [1, 2 | 3], [a | b], [[] | []], [1.5, "x" | <<"tail">>],
     {}, {a}, {1, 2, 3}, list_to_tuple(lists:seq(1, 255)), list_to_tuple(lists:seq(1, 256)),
     #{}, #{a => 1}, maps:from_list([{N, N * N} || N <- lists:seq(1, 32)]),
     maps:from_list([{N, N * N} || N <- lists:seq(1, 33)]),
     maps:from_list([{{key, N}, #{inner => [N]}} || N <- lists:seq(1, 100)]),
     #{#{nested => key} => #{[] => {}}, <<"bin">> => 1.0},
     <<>>, <<"binary">>, binary:copy(<<1, 2, 3, 4, 5, 6, 7, 8>>, 16384),
     <<1:1>>, <<255, 3:7>>, <<0:0, 1:15>>,
     self(), list_to_pid("<0.0.0>"), ext_pid('other@host', 17, 3, 16#12345678),
     ext_pid('x@y', 0, 0, 1), ext_pid('Ω@日本', 123, 0, 16#FFFFFFFF),
     hd(erlang:ports()), ext_port('other@host', 42, 7), ext_port('other@host', 1 bsl 40, 9),
     make_ref(), erlang:alias(), ext_ref('other@host', 99, [1, 2, 3]),
     ext_ref('other@host', 5, [1, 2, 3, 4, 5]),
     fun() -> ok end, fun(X) -> {X, Free} end, fun(A, B) -> A + B + element(2, Free) end,
     fun local_function/1, fun lists:map/2, fun erlang:'+'/2, fun ?MODULE:fixed_terms/0,
     erlang:make_fun('module with space', 'fΩ', 255),
     deep(list, 200), deep(tuple, 200), deep(map, 60),
     {[fun() -> self() end], #{ref => make_ref()}, [self() | hd(erlang:ports())]}].

local_function(X) -> X.

%% -0.0 built from its bits: a -0.0 literal is folded to 0.0 by OTP 25's compiler.
neg_zero() ->
    <<F/float>> = <<16#8000000000000000:64>>,
    F.

%% External pids/ports/refs of other nodes, built by decoding hand-made
%% external format (the only way to get them without those nodes).
ext_pid(Node, Id, Serial, Creation) ->
    binary_to_term(<<131, 88, (atom_ext(Node))/binary, Id:32, Serial:32, Creation:32>>).

ext_port(Node, Id, Creation) when Id < 1 bsl 32 ->
    binary_to_term(<<131, 89, (atom_ext(Node))/binary, Id:32, Creation:32>>);
ext_port(Node, Id, Creation) ->
    binary_to_term(<<131, 120, (atom_ext(Node))/binary, Id:64, Creation:32>>).

ext_ref(Node, Creation, Ids) ->
    IdBin = << <<I:32>> || I <- Ids >>,
    binary_to_term(<<131, 90, (length(Ids)):16, (atom_ext(Node))/binary, Creation:32,
                     IdBin/binary>>).

atom_ext(Atom) ->
    Text = atom_to_binary(Atom, utf8),
    <<119, (byte_size(Text)):8, Text/binary>>.

deep(_, 0) -> leaf;
deep(list, N) -> [deep(list, N - 1)];
deep(tuple, N) -> {N, deep(tuple, N - 1)};
deep(map, N) -> #{N => deep(map, N - 1)}.

%% --- random terms ---

gen(Depth) when Depth =< 0 -> leaf();
gen(Depth) ->
    case rand:uniform(10) of
        N when N =< 5 -> leaf();
        _ -> container(Depth - 1)
    end.

container(D) ->
    case rand:uniform(12) of
        1 -> [gen(D) || _ <- seq(rand:uniform(6))];
        2 -> [gen(D) || _ <- seq(rand:uniform(4))] ++ non_list_leaf();
        3 -> list_to_tuple([gen(D) || _ <- seq(rand:uniform(7) - 1)]);
        4 -> list_to_tuple([leaf() || _ <- seq(256 + rand:uniform(50))]);
        5 -> maps:from_list([{gen(D - 1), gen(D)} || _ <- seq(rand:uniform(8))]);
        6 -> maps:from_list([{leaf(), leaf()} || _ <- seq(32 + rand:uniform(40))]);
        7 -> #{nested => maps:from_list([{K, #{v => gen(D)}} || K <- seq(rand:uniform(5))])};
        8 -> deep(element(rand:uniform(3), {list, tuple, map}), rand:uniform(30));
        9 -> [gen(D) | gen(D)];
        _ -> {gen(D), gen(D)}
    end.

non_list_leaf() ->
    case leaf() of
        L when is_list(L) -> atom_tail;
        T -> T
    end.

leaf() ->
    case rand:uniform(17) of
        1 -> rand:uniform(256) - 1;
        2 -> rand:uniform(1 bsl 32) - (1 bsl 31) - 1;
        3 -> sign() * ((1 bsl 31) + rand:uniform(1 bsl (32 + rand:uniform(300))));
        4 -> sign() * (1 bsl 2040 + rand:uniform(1 bsl (2041 + rand:uniform(500))));
        5 -> float();
        6 -> atom();
        7 -> string();
        8 -> binary();
        9 -> bitstring();
        N when N >= 10, N =< 14 ->
            case get(dg_opaque_ok) of
                false -> atom();
                _ -> opaque_leaf(N)
            end;
        15 -> [];
        16 -> float();
        _ -> rand:uniform(1000) - 500
    end.

opaque_leaf(10) -> pid();
opaque_leaf(11) -> port();
opaque_leaf(12) -> ref();
opaque_leaf(13) -> local_fun();
opaque_leaf(14) -> export_fun().

sign() -> case rand:uniform(2) of 1 -> 1; 2 -> -1 end.

seq(0) -> [];
seq(N) -> lists:seq(1, N).

float() ->
    case rand:uniform(9) of
        1 -> 0.0;
        2 -> neg_zero();
        3 -> 5.0e-324 * rand:uniform(1000);          % subnormal
        4 -> 1.7976931348623157e308 / rand:uniform(1000);
        5 -> -rand:uniform() * 1.0e-300;
        6 -> rand:normal() * 1.0e6;
        7 -> float(rand:uniform(1 bsl 53));
        _ -> random_finite_float()
    end.

random_finite_float() ->
    <<S:1, E:11, M:52>> = rand:bytes(8),
    case E of
        2047 -> random_finite_float();            % Inf/NaN are not terms
        _ -> <<F/float>> = <<S:1, E:11, M:52>>, F
    end.

atom() ->
    case rand:uniform(10) of
        1 -> '';
        2 -> list_to_atom(random_chars(rand:uniform(8), fun ascii/0));
        3 -> list_to_atom(random_chars(rand:uniform(8), fun latin1/0));
        4 -> list_to_atom(random_chars(rand:uniform(8), fun unicode/0));
        5 -> list_to_atom(random_chars(255, fun unicode/0));
        6 -> list_to_atom(random_chars(255, fun ascii/0));
        7 -> element(rand:uniform(5), {'hello world', 'A', 'Quoted Atom', 'a-b', '[]'});
        _ -> element(rand:uniform(6), {ok, error, true, false, undefined, nonode@nohost})
    end.

ascii() -> $a + rand:uniform(26) - 1.
latin1() -> 16#C0 + rand:uniform(64) - 1.
unicode() -> element(rand:uniform(5), {16#3A9, 16#65E5, 16#1F600, 16#E9, $z}).

random_chars(N, Gen) -> [Gen() || _ <- seq(N)].

string() ->
    case rand:uniform(100) of
        N when N =< 10 -> "";
        N when N =< 40 -> random_chars(rand:uniform(20), fun ascii/0);
        N when N =< 70 -> [rand:uniform(256) - 1 || _ <- seq(rand:uniform(40))];
        _ -> random_chars(rand:uniform(10), fun unicode/0)
    end.

binary() ->
    case rand:uniform(50) of
        N when N =< 8 -> <<>>;
        _ -> rand:bytes(rand:uniform(64))
    end.

bitstring() ->
    Bits = rand:uniform(7),
    <<(rand:bytes(rand:uniform(16) - 1))/binary, (rand:uniform(1 bsl Bits) - 1):Bits>>.

pid() ->
    case rand:uniform(3) of
        1 -> self();
        2 -> list_to_pid("<0." ++ integer_to_list(rand:uniform(1000)) ++ ".0>");
        3 -> ext_pid(node_name(), rand:uniform(1 bsl 15), rand:uniform(8) - 1,
                     rand:uniform(16#FFFFFFFF))
    end.

port() ->
    case rand:uniform(3) of
        1 -> hd(erlang:ports());
        2 -> ext_port(node_name(), rand:uniform(1 bsl 28), rand:uniform(16#FFFFFFFF));
        3 -> ext_port(node_name(), (1 bsl 32) + rand:uniform(1 bsl 40), rand:uniform(16#FFFFFFFF))
    end.

ref() ->
    case rand:uniform(4) of
        1 -> make_ref();
        2 -> erlang:alias();
        3 -> ext_ref(node_name(), rand:uniform(16#FFFFFFFF), [rand:uniform(1 bsl 18) - 1,
                                                              rand:uniform(16#FFFFFFFF) - 1,
                                                              rand:uniform(16#FFFFFFFF) - 1]);
        4 -> ext_ref(node_name(), rand:uniform(16#FFFFFFFF),
                     [rand:uniform(16#FFFFFFFF) - 1 || _ <- seq(5)])
    end.

node_name() ->
    element(rand:uniform(3), {'peer@127.0.0.1', 'n@h', 'Ω@例え'}).

local_fun() ->
    Free = leaf_no_fun(),
    Free2 = rand:uniform(100),
    case rand:uniform(5) of
        1 -> fun() -> ok end;
        2 -> fun(X) -> {X, Free} end;
        3 -> fun(X, Y) -> [X, Y, Free, Free2] end;
        4 -> fun local_function/1;
        5 -> fun() -> Free2 end
    end.

%% A leaf that is not itself a fun (keeps closures from nesting without end).
leaf_no_fun() ->
    case leaf() of
        F when is_function(F) -> fun_free;
        T -> T
    end.

export_fun() ->
    element(rand:uniform(5),
            {fun lists:map/2, fun erlang:'+'/2, fun ?MODULE:w/1,
             erlang:make_fun(nonexisting_mod, 'Ω', 0), fun erlang:node/0}).
