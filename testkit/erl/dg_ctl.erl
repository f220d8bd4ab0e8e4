%% dg_ctl: the control channel of a test node (see testkit::node).
%%
%% Started with `-eval 'dg_ctl:main()'` after the node is alive. Protocol, all
%% on the node's stdin/stdout, one line per message, payloads hex-encoded so
%% that no expression or result text can break the framing:
%%
%%   node -> test, once:     <<DG:0:ready:HEX("Node Port Creation")>>
%%   test -> node:           DGREQ Id HEX(utf8 Erlang expression)
%%   node -> test:           <<DG:Id:ok:HEX(utf8 "~0tp" of the value)>>
%%                       or  <<DG:Id:error:HEX(utf8 "Class:Reason\nStack")>>
%%
%% Replies start on a fresh line (we emit a newline first) because evaluated
%% code may have printed a partial line. Anything else on stdout is the node's
%% own output and is kept by the harness as a log.
%%
%% Expressions are evaluated one at a time, each in a fresh process (so an
%% exit signal or a crash cannot take the control loop down); variable
%% bindings carry over from one request to the next, like in the shell.
%% End of stdin halts the node, so a test that dies leaves no stray node.
-module(dg_ctl).

-export([main/0]).

main() ->
    %% Own process: -eval must return so init can finish its boot sequence.
    spawn(fun start/0),
    ok.

start() ->
    %% With dg_epmd the port is whatever the listener bound; with OTP's own EPMD client the
    %% harness fixed it with inet_dist_listen_min.
    Port = case dg_epmd:listen_port() of
               undefined -> application:get_env(kernel, inet_dist_listen_min, undefined);
               P -> P
           end,
    Ready = io_lib:format("~ts ~w ~w", [node(), Port, erlang:system_info(creation)]),
    emit("0", "ready", Ready),
    loop(erl_eval:new_bindings()).

loop(Bindings) ->
    case io:get_line(standard_io, '') of
        eof ->
            erlang:halt(0);
        {error, _} ->
            erlang:halt(1);
        Line ->
            case string:lexemes(string:trim(Line), " ") of
                ["DGREQ", Id, Hex] ->
                    loop(handle(Id, Hex, Bindings));
                ["DGREQ", Id] ->
                    emit(Id, "error", "empty expression"),
                    loop(Bindings);
                _ ->
                    %% Not for us (a stray line); ignore it rather than die.
                    loop(Bindings)
            end
    end.

handle(Id, Hex, Bindings) ->
    case evaluate(Hex, Bindings) of
        {ok, Value, NewBindings} ->
            emit(Id, "ok", io_lib:format("~0tp", [Value])),
            NewBindings;
        {error, Class, Reason, Stack} ->
            emit(Id, "error", io_lib:format("~tp:~0tp~n~0tp", [Class, Reason, Stack])),
            Bindings
    end.

evaluate(Hex, Bindings) ->
    try parse(Hex) of
        Exprs ->
            Parent = self(),
            Tag = make_ref(),
            {_Pid, MRef} =
                spawn_monitor(
                  fun() ->
                          Result =
                              try erl_eval:exprs(Exprs, Bindings) of
                                  {value, V, NB} -> {ok, V, NB}
                              catch
                                  C:R:S -> {error, C, R, S}
                              end,
                          Parent ! {Tag, Result}
                  end),
            receive
                {Tag, Result} ->
                    erlang:demonitor(MRef, [flush]),
                    Result;
                {'DOWN', MRef, process, _, Why} ->
                    %% Killed by an exit signal before it could answer.
                    {error, exit, Why, []}
            end
    catch
        C:R:S -> {error, C, R, S}
    end.

%% Hex -> UTF-8 text -> expressions; the final '.' is optional.
parse(Hex) ->
    Text = unicode:characters_to_list(binary:decode_hex(list_to_binary(Hex))),
    Tokens =
        case erl_scan:string(Text) of
            {ok, Ts, _} -> Ts;
            {error, Info, _} -> erlang:error({scan_error, Info})
        end,
    Dotted =
        case lists:reverse(Tokens) of
            [{dot, _} | _] -> Tokens;
            [] -> erlang:error(empty_expression);
            [Last | _] -> Tokens ++ [{dot, element(2, Last)}]
        end,
    case erl_parse:parse_exprs(Dotted) of
        {ok, Exprs} -> Exprs;
        {error, Info2} -> erlang:error({parse_error, Info2})
    end.

emit(Id, Kind, Chars) ->
    Hex = binary:encode_hex(unicode:characters_to_binary(Chars)),
    io:put_chars(standard_io, ["\n<<DG:", Id, ":", Kind, ":", Hex, ">>\n"]).
