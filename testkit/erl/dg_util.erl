%% dg_util: file-based helpers behind testkit::corpus (one erl run each).
%%
%% Files, not stdout/arguments, carry the data: terms can be megabytes and
%% arbitrary bytes, and no quoting can go wrong.
-module(dg_util).

-export([eval_string/1, term_from_expr_file/3, b2t_w_file/3]).

%% Parse and evaluate an expression sequence; the final '.' is optional.
eval_string(Text) ->
    {ok, Tokens, _} = erl_scan:string(Text),
    Dotted = case lists:reverse(Tokens) of
                 [{dot, _} | _] -> Tokens;
                 [Last | _] -> Tokens ++ [{dot, element(2, Last)}]
             end,
    {ok, Exprs} = erl_parse:parse_exprs(Dotted),
    {value, V, _} = erl_eval:exprs(Exprs, erl_eval:new_bindings()),
    V.

%% ExprFile and OptsFile hold UTF-8 Erlang expressions (the term and the
%% term_to_binary/2 option list); the encoding is written to OutFile.
term_from_expr_file(ExprFile, OptsFile, OutFile) ->
    Term = eval_string(read_text(ExprFile)),
    Opts = eval_string(read_text(OptsFile)),
    ok = file:write_file(OutFile, term_to_binary(Term, Opts)).

%% InFile: a sequence of Len:32 Bytes. For each, OutFile gets
%% Status:8 Len:32 Text, Status 0 with the text of binary_to_term(Bytes)
%% (Style w: dg_gen:w/1, i.e. ~w; Style canonical: dg_gen:w_canonical/1), or
%% Status 1 with an error description. Trailing bytes after a complete term
%% count as an error (binary_to_term/1 itself would silently ignore them).
b2t_w_file(InFile, OutFile, Style) ->
    {ok, Bin} = file:read_file(InFile),
    Print = case Style of
                w -> fun dg_gen:w/1;
                canonical -> fun dg_gen:w_canonical/1
            end,
    ok = file:write_file(OutFile, [decode_one(B, Print) || B <- split(Bin)]).

split(<<>>) -> [];
split(<<Len:32, B:Len/binary, Rest/binary>>) -> [B | split(Rest)].

decode_one(B, Print) ->
    {Status, Text} =
        try binary_to_term(B, [used]) of
            {T, Used} when Used =:= byte_size(B) ->
                {0, Print(T)};
            {_, Used} ->
                {1, unicode:characters_to_binary(
                      io_lib:format("trailing bytes: term ends at byte ~w of ~w",
                                    [Used, byte_size(B)]))}
        catch
            C:R ->
                {1, unicode:characters_to_binary(io_lib:format("~w:~0tp", [C, R]))}
        end,
    [<<Status:8, (byte_size(Text)):32>>, Text].

read_text(File) ->
    {ok, Bin} = file:read_file(File),
    unicode:characters_to_list(Bin).
