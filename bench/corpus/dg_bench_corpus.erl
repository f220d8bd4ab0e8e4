%% Generates the codec benchmark corpora with real erl: `escript bench/corpus/dg_bench_corpus.erl bench/corpus`.
%% Each file is a sequence of Len:32 + term_to_binary(Term) records.
%% - term-heavy.etf: messages shaped like real application traffic (gen_server calls, records of
%%   atoms, small integers, short lists, maps, pids, refs, strings), ~100 B to a few KB each.
%% - binary-heavy.etf: messages that mostly carry binaries (1 KiB to 64 KiB) in small envelopes.
-module(dg_bench_corpus).
-mode(compile).
-export([main/1]).

main([Dir]) ->
    rand:seed(exsss, {1, 2, 3}),
    write(filename:join(Dir, "term-heavy.etf"), [term_msg(I) || I <- lists:seq(1, 6000)]),
    write(filename:join(Dir, "binary-heavy.etf"), [bin_msg(I) || I <- lists:seq(1, 120)]),
    ok.

write(File, Terms) ->
    Bin = << <<(byte_size(B)):32, B/binary>> || T <- Terms, B <- [term_to_binary(T)] >>,
    ok = file:write_file(File, Bin),
    io:format("~s: ~b terms, ~b bytes~n", [File, length(Terms), byte_size(Bin)]).

atom() -> element(rand:uniform(12), {ok, error, undefined, true, false, user, session, cache,
                                       timeout, request, reply, 'state@node'}).
small() -> rand:uniform(300) - 1.
field(0) -> atom();
field(D) ->
    case rand:uniform(11) of
        1 -> small();
        2 -> rand:uniform(1 bsl 40);
        3 -> atom();
        4 -> list_to_binary(integer_to_list(rand:uniform(1000000)));
        5 -> "user-" ++ integer_to_list(rand:uniform(99));
        6 -> [field(D - 1) || _ <- lists:seq(1, rand:uniform(5))];
        7 -> list_to_tuple([atom() | [field(D - 1) || _ <- lists:seq(1, rand:uniform(4))]]);
        8 -> maps:from_list([{atom(), field(D - 1)} || _ <- lists:seq(1, rand:uniform(4))]);
        9 -> self();
        10 -> make_ref();
        11 -> rand:uniform() * 1000
    end.

term_msg(I) ->
    case I rem 3 of
        0 -> {'$gen_call', {self(), make_ref()}, {request, field(3), field(2)}};
        1 -> {event, atom(), [field(3) || _ <- lists:seq(1, 4)]};
        2 -> #{id => I, kind => atom(), body => field(4), tags => [atom(), atom()]}
    end.

bin_msg(I) ->
    Size = 1024 bsl (I rem 7),
    {chunk, I, atom(), crypto:strong_rand_bytes(Size)}.
