%% dg_epmd: an `-epmd_module` replacement so test nodes need no epmd daemon.
%%
%% Use: erl -start_epmd false -epmd_module dg_epmd -pa DIR -name N@127.0.0.1
%% (`-start_epmd false` stops erlexec from spawning an epmd daemon of its own.)
%%
%% Everything comes from OS environment variables, read at call time, so a
%% test can repoint a node with os:putenv/2 while it runs:
%%   DG_PORT_<Alive>  port to dial for node <Alive>@Host (e.g. DG_PORT_b=4370)
%%   DG_LISTEN        port this node listens on (0 or unset: any free port)
%%   DG_CREATION      creation to use (unset: random)
%%
%% OTP 25 callbacks (verified against kernel-8.5.3 inet_tcp_dist/net_kernel):
%%   start_link/0           child of net_sup (erl_distribution), may return ignore
%%   register_node/3        called directly by inet_tcp_dist:listen with the
%%                          alive name as an ATOM, the port and the driver
%%   port_please/2          called directly by inet_tcp_dist:do_setup with the
%%                          alive name as a STRING and the IP tuple, unless
%%                          address_please/3 already returned a port
%%   listen_port_please/2   optional (falls back to erl_epmd), name is an atom
%%   address_please/3       optional (falls back to erl_epmd)
%% register_node/2, port_please/3 and names/1 are not called by the
%% distribution itself but are part of erl_epmd's API, so we provide them.
-module(dg_epmd).

-export([start_link/0,
         register_node/2, register_node/3,
         port_please/2, port_please/3,
         listen_port_please/2,
         address_please/3,
         names/0, names/1,
         listen_port/0]).

%% No server process is needed: all state is in the environment, and the port
%% we registered is kept in a persistent_term for listen_port/0.
start_link() ->
    ignore.

register_node(Name, Port) ->
    register_node(Name, Port, inet_tcp).

register_node(_Name, Port, _Driver) ->
    persistent_term:put({?MODULE, listen_port}, Port),
    {ok, creation()}.

%% The port the distribution listener actually bound (known once the node is
%% alive); lets the test harness learn the port when DG_LISTEN is 0.
listen_port() ->
    persistent_term:get({?MODULE, listen_port}, undefined).

port_please(Name, Host) ->
    port_please(Name, Host, infinity).

port_please(Name, _Host, _Timeout) ->
    case env_port("DG_PORT_" ++ alive(Name)) of
        undefined -> noport;
        Port -> {port, Port, 6}          % 6: OTP 23+ handshake ('N' send_name)
    end.

listen_port_please(_Name, _Host) ->
    case env_port("DG_LISTEN") of
        undefined -> {ok, 0};
        Port -> {ok, Port}
    end.

address_please(_Name, Host, AddressFamily) ->
    inet:getaddr(Host, AddressFamily).

%% There is no registry to list.
names() ->
    names(localhost).

names(_Host) ->
    {error, address}.

%% --- helpers ---

%% Accept a node's alive part as atom or string; a full name also works.
alive(Name) when is_atom(Name) -> alive(atom_to_list(Name));
alive(Name) when is_list(Name) -> lists:takewhile(fun(C) -> C =/= $@ end, Name).

env_port(Var) ->
    case os:getenv(Var) of
        false -> undefined;
        "" -> undefined;
        Text ->
            case string:to_integer(string:trim(Text)) of
                {Port, ""} when Port >= 0, Port =< 65535 -> Port;
                _ -> erlang:error({bad_port_in_env, Var, Text})
            end
    end.

%% Creation: DG_CREATION if set, else random in 4..16#FFFFFFF0 (OTP's own
%% create_creation/0 avoids 0..3, which are the old 2-bit creations).
creation() ->
    case os:getenv("DG_CREATION") of
        false -> 3 + rand:uniform(16#FFFFFFF0 - 3);
        Text ->
            case string:to_integer(string:trim(Text)) of
                {C, ""} when C >= 1, C =< 16#FFFFFFFF -> C;
                _ -> erlang:error({bad_creation_in_env, Text})
            end
    end.
