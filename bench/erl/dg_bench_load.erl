%% dg_bench_load: the real-node side of distgate-bench.
%%
%% A sink node runs start_sink/0 (a registered process `dg_sink` that echoes pings and counts
%% flood messages); a sender node runs pingpong/5 or flood/4 against {dg_sink, SinkNode}.
%% Payload shapes match the Rust load generator's (bench/src/etf.rs): payload/1.
-module(dg_bench_load).

-export([start_sink/0, payload/1, payload_size/1, pingpong/5, flood/4, f/1]).

start_sink() ->
    case whereis(dg_sink) of
        undefined -> ok;
        Old -> unregister(dg_sink), exit(Old, kill)
    end,
    Pid = spawn(fun() -> sink(0) end),
    true = register(dg_sink, Pid),
    ok.

sink(N) ->
    receive
        {ping, From, P} -> From ! {pong, P}, sink(N);
        {flood, _} -> sink(N + 1);
        {done, From} -> From ! {count, N}, sink(0)
    end.

%% An exported function, for the external fun in the fun payload.
f(X) -> X.

payload(small) ->
    {0, {bench, [1, 2, 3, 4, 5, 6, 7, 8], {ok, alpha, beta, gamma}, "hello world", 1.25, #{key => value}}};
payload(mixed) ->
    {0, [#{id => I, name => iolist_to_binary(io_lib:format("item-~2..0w", [I])), tags => [red, green],
           score => I * 1.5, note => "some text"} || I <- lists:seq(1, 12)]};
payload(bin64k) ->
    {0, pattern(64 * 1024)};
payload(bin1m) ->
    {0, pattern(1024 * 1024)};
payload('fun') ->
    Y = 42,
    Z = <<"ctx">>,
    {0, {fun_msg, fun(X) -> {X + Y, Z} end, fun lists:reverse/1}}.

payload_size(Kind) ->
    byte_size(term_to_binary(payload(Kind))).

pattern(N) ->
    << <<(((I * 2654435761) band 16#FFFFFFFF) bsr 24):8>> || I <- lists:seq(0, N - 1) >>.

now_ns() -> erlang:monotonic_time(nanosecond).

%% Round trips to {dg_sink, Node} until Max are done or DurMs passed; the round-trip times
%% (ns, 64-bit big-endian) go to File. Returns {Count, ElapsedNs, PayloadBytes}.
pingpong(Node, Kind, Max, DurMs, File) ->
    P = payload(Kind),
    Dest = {dg_sink, Node},
    Msg = {ping, self(), P},
    [rt(Dest, Msg) || _ <- lists:seq(1, 10)],
    T0 = now_ns(),
    Rtts = pp(Dest, Msg, Max, T0 + DurMs * 1000000, []),
    Elapsed = now_ns() - T0,
    ok = file:write_file(File, << <<R:64>> || R <- Rtts >>),
    {length(Rtts), Elapsed, byte_size(term_to_binary(P))}.

rt(Dest, Msg) ->
    T1 = now_ns(),
    Dest ! Msg,
    receive {pong, _} -> now_ns() - T1
    after 30000 -> exit(pong_timeout)
    end.

pp(_Dest, _Msg, 0, _Deadline, Acc) ->
    Acc;
pp(Dest, Msg, Left, Deadline, Acc) ->
    case now_ns() >= Deadline of
        true -> Acc;
        false -> pp(Dest, Msg, Left - 1, Deadline, [rt(Dest, Msg) | Acc])
    end.

%% Send as fast as the link takes until Max are sent or DurMs passed, then wait until the sink
%% has them all. Returns {Sent, ElapsedNs, PayloadBytes, SinkCount}.
flood(Node, Kind, Max, DurMs) ->
    P = payload(Kind),
    Dest = {dg_sink, Node},
    Size = byte_size(term_to_binary(P)),
    %% Look at the clock every Every messages (about 64 KiB of payload).
    Every = max(1, 65536 div Size),
    T0 = now_ns(),
    Sent = fl(Dest, {flood, P}, Max, T0 + DurMs * 1000000, Every, Every, 0),
    Dest ! {done, self()},
    receive
        {count, C} -> {Sent, now_ns() - T0, Size, C}
    after 120000 -> exit(count_timeout)
    end.

fl(_Dest, _Msg, Max, _Deadline, _Every, _K, Max) ->
    Max;
fl(Dest, Msg, Max, Deadline, Every, 0, N) ->
    case now_ns() >= Deadline of
        true -> N;
        false -> fl(Dest, Msg, Max, Deadline, Every, Every, N)
    end;
fl(Dest, Msg, Max, Deadline, Every, K, N) ->
    Dest ! Msg,
    fl(Dest, Msg, Max, Deadline, Every, K - 1, N + 1).
