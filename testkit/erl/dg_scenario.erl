%% dg_scenario: Erlang side of testkit::capture.
%%
%% start_sink/0 runs on node B: a registered process `dg_sink` that keeps every
%% message it receives (so sends by name have a real target) and reports how
%% many it got via sink_count/0.
%%
%% rich/1 runs on node A and drives traffic to B that exercises the parts of
%% the distribution protocol a proxy has to get right. It lives in a compiled
%% module so the funs it sends are real NEW_FUN_EXT funs of a real module
%% (with the module's MD5), not erl_eval closures.
-module(dg_scenario).

-export([start_sink/0, sink_count/0, sink_messages/0, rich/1,
         echo_loop/0, idle_loop/0, local_fun_target/1]).

%% --- node B side ---

start_sink() ->
    case whereis(dg_sink) of
        undefined ->
            Pid = spawn(fun() -> sink([]) end),
            true = register(dg_sink, Pid),
            Pid;
        Pid ->
            Pid
    end.

sink(Acc) ->
    receive
        {dg_sink_query, From, Tag, What} ->
            Reply = case What of
                        count -> length(Acc);
                        messages -> lists:reverse(Acc)
                    end,
            From ! {Tag, Reply},
            sink(Acc);
        Msg ->
            sink([Msg | Acc])
    end.

sink_count() -> sink_query(count).

sink_messages() -> sink_query(messages).

sink_query(What) ->
    Tag = make_ref(),
    dg_sink ! {dg_sink_query, self(), Tag, What},
    receive {Tag, Reply} -> Reply after 10000 -> erlang:error(dg_sink_timeout) end.

%% Spawned on B by rich/1.
echo_loop() ->
    receive
        {echo, From, Msg} -> From ! {echo_reply, Msg}, echo_loop();
        stop -> ok
    end.

idle_loop() ->
    receive stop -> ok end.

local_fun_target(X) -> {local_fun_target, X}.

%% --- node A side ---

%% Returns a map summarising what B saw; every step waits for its own answer,
%% and the last step is a synchronous rpc:call, so when rich/1 returns, B has
%% received everything sent before.
rich(B) when is_atom(B) ->
    true = net_kernel:connect_node(B),
    Sink = {dg_sink, B},
    Timeout = 20000,

    %% 1. Atom cache: 300 fresh atoms in batches of 100 (<= 255 refs fit in
    %% one message header), each batch sent twice: the first send creates
    %% cache entries, the second refers to them.
    Atoms = [list_to_atom("dg_atom_" ++ integer_to_list(N)) || N <- lists:seq(1, 300)],
    [Sink ! {atoms, Batch} || Batch <- chunks(Atoms, 100), _ <- [first, again]],
    %% ...and some non-ASCII ones (UTF-8 atom text in cache entries).
    Sink ! {unicode_atoms, ['héllo', 'Ωμέγα', '日本', list_to_atom(lists:duplicate(255, $x))]},

    %% 2. A 1 MiB binary: larger than 64 KiB, so OTP sends it in fragments.
    Big = binary:copy(<<"distgate">>, 131072),
    Sink ! {big, Big},

    %% 3. Funs: local funs with and without free variables, a local fun that
    %% names a local function, export funs.
    Free = {free, 42, <<"captured">>},
    Sink ! {funs,
            fun() -> ok end,
            fun(X) -> {X, Free} end,
            fun local_fun_target/1,
            fun lists:map/2,
            fun ?MODULE:rich/1},

    %% 4. spawn on the remote node (SPAWN_REQUEST / SPAWN_REPLY), by MFA and
    %% by fun.
    Echo = spawn(B, ?MODULE, echo_loop, []),
    FunSpawned = spawn(B, fun() -> ?MODULE:idle_loop() end),

    %% 5. monitor / demonitor a remote process, with a message round trip in
    %% between; then a monitor that fires (PAYLOAD_MONITOR_P_EXIT).
    MRef = erlang:monitor(process, Echo),
    Echo ! {echo, self(), hello},
    receive {echo_reply, hello} -> ok after Timeout -> erlang:error(echo_timeout) end,
    true = erlang:demonitor(MRef, [flush]),
    MRef2 = erlang:monitor(process, FunSpawned),
    FunSpawned ! stop,
    receive {'DOWN', MRef2, process, FunSpawned, normal} -> ok
    after Timeout -> erlang:error(down_timeout) end,

    %% 6. link / exit: LINK, EXIT2 (exit/2), and the EXIT signal coming back
    %% over the link; then link + UNLINK_ID on another process.
    process_flag(trap_exit, true),
    Victim = spawn(B, ?MODULE, idle_loop, []),
    true = link(Victim),
    true = exit(Victim, dg_exit_reason),
    receive {'EXIT', Victim, dg_exit_reason} -> ok
    after Timeout -> erlang:error(exit_timeout) end,
    true = link(Echo),
    true = unlink(Echo),

    %% 7. registered-name send (REG_SEND) with a payload mixing many types.
    Sink ! {mixed, self(), make_ref(), 3.14, -12345678901234567890, "string",
            [1, 2 | improper], #{a => 1, <<"k">> => [x]}, <<1:3>>},

    %% 8. rpc:call (erpc: SPAWN_REQUEST of erpc:execute_call/4 + reply), also
    %% the final synchronous round trip: the sink has seen every earlier send.
    B = rpc:call(B, erlang, node, []),
    Echo ! stop,
    Received = rpc:call(B, ?MODULE, sink_count, []),
    #{b => B, sink_count => Received}.

chunks([], _) -> [];
chunks(L, N) when length(L) =< N -> [L];
chunks(L, N) ->
    {H, T} = lists:split(N, L),
    [H | chunks(T, N)].
