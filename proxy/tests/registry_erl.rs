//! The registry against a real node: funs made by compiled code are found by the MD5 and index
//! they carry (`fun_info(F, new_uniq)`, `new_index`), with the name, arity and free-variable
//! count the node reports; two versions of a module are two MD5s, both known.

use distgate::registry::{Limits, Registry, Source};
use distgate_testkit::erl;
use distgate_testkit::{Node, NodeOptions, TempDir};

const V1: &str = r#"
-module(dg_reg).
-export([f/1, g/0, h/2, make/0]).
f(X) -> fun(Y) -> X + Y end.
g() -> fun() -> ok end.
h(A, B) -> fun(C) -> {A, B, C} end.
%% `fun f/1` is a local fun too (its lambda is f/1 itself).
make() -> [f(1), g(), h(a, "b"), fun f/1, fun(P, Q) -> [P, Q] end].
"#;

/// Different code (f multiplies), one more export.
const V2: &str = r#"
-module(dg_reg).
-export([f/1, g/0, h/2, make/0, extra/0]).
f(X) -> fun(Y) -> X * Y end.
g() -> fun() -> ok end.
h(A, B) -> fun(C) -> {A, B, C} end.
make() -> [f(1), g(), h(a, "b"), fun f/1, fun(P, Q) -> [P, Q] end].
extra() -> fun(Z) -> Z end.
"#;

fn compile(dir: &std::path::Path, src: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let file = dir.join("dg_reg.erl");
    std::fs::write(&file, src).unwrap();
    erl::compile(&[&file], dir).unwrap();
    std::fs::remove_file(&file).unwrap();
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// What the node says about each fun of `Expr` (a list of funs): (new_uniq, new_index, name,
/// arity, free variables).
fn fun_infos(node: &Node, expr: &str) -> Vec<([u8; 16], u32, String, u32, u32)> {
    let text = node.eval(&format!(
        "lists:flatten([io_lib:format(\"~s ~b ~s ~b ~b;\", \
           [binary:encode_hex(element(2, erlang:fun_info(F, new_uniq))), \
            element(2, erlang:fun_info(F, new_index)), \
            binary:encode_hex(atom_to_binary(element(2, erlang:fun_info(F, name)), utf8)), \
            element(2, erlang:fun_info(F, arity)), \
            length(element(2, erlang:fun_info(F, env)))]) || F <- {expr}])"
    ));
    text.trim_matches('"')
        .split(';')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let f: Vec<&str> = s.split(' ').collect();
            let mut md5 = [0u8; 16];
            md5.copy_from_slice(&unhex(f[0]));
            let name = String::from_utf8(unhex(f[2])).unwrap();
            (md5, f[1].parse().unwrap(), name, f[3].parse().unwrap(), f[4].parse().unwrap())
        })
        .collect()
}

fn md5_on_node(node: &Node) -> [u8; 16] {
    let t = node.eval("binary:encode_hex(dg_reg:module_info(md5))");
    let mut md5 = [0u8; 16];
    md5.copy_from_slice(&unhex(t.trim_matches(|c| c == '<' || c == '>' || c == '"')));
    md5
}

#[test]
fn funs_made_on_a_real_node_are_found_in_the_registry() {
    let tmp = TempDir::new("dg_registry_erl");
    let (d1, d2) = (tmp.path().join("v1"), tmp.path().join("v2"));
    compile(&d1, V1);
    compile(&d2, V2);

    let reg = Registry::new("test");
    let report = reg.refresh(&[Source::Dir(d1.clone()), Source::Dir(d2.clone())], &Limits::default());
    assert!(report.ok(), "{:?}", report.errors);
    assert_eq!((report.files, report.added), (2, 2));
    let snap = reg.load();
    let versions = snap.lookup("dg_reg");
    assert_eq!(versions.len(), 2, "two versions of dg_reg");
    assert_ne!(versions[0].md5, versions[1].md5);

    let node = Node::start_with(
        "dgreg",
        NodeOptions { extra_args: vec!["-pa".into(), d1.display().to_string()], ..NodeOptions::default() },
    );
    let md5_v1 = md5_on_node(&node);
    let v1 = snap.knows("dg_reg", &md5_v1).expect("the node's version is in the registry");
    assert_eq!(v1.origin.as_ref(), d1.join("dg_reg.beam").display().to_string());

    // Funs made by version 1: each found by (module, new_uniq, new_index), matching the node.
    let old_funs = fun_infos(&node, "dg_reg:make()");
    assert_eq!(old_funs.len(), 5);
    for (uniq, index, name, arity, free) in &old_funs {
        assert_eq!(uniq, &md5_v1, "new_uniq is module_info(md5)");
        let l = snap.lambda("dg_reg", uniq, *index).unwrap_or_else(|| panic!("lambda {index} ({name})"));
        assert_eq!(&*l.name, name);
        assert_eq!(l.num_free, *free, "{name}");
        assert_eq!(l.fun_arity(), Some(*arity), "{name}");
        assert_eq!(l.index, *index);
    }
    // The closures: names as the compiler makes them, free variables as the node counts them.
    let names: Vec<&str> = old_funs.iter().map(|f| f.2.as_str()).collect();
    assert!(names.contains(&"-f/1-fun-0-"), "{names:?}");
    assert!(old_funs.iter().any(|f| f.2 == "-h/2-fun-0-" && f.4 == 2));

    // Load version 2 on the node: new funs carry the other MD5, also known, and the old
    // version's funs are still resolvable.
    let load = node.eval(&format!(
        "{{ok, B}} = file:read_file({}), code:load_binary(dg_reg, \"dg_reg.beam\", B)",
        erl::string_literal(&d2.join("dg_reg.beam").display().to_string())
    ));
    assert_eq!(load, "{module,dg_reg}");
    let md5_v2 = md5_on_node(&node);
    assert_ne!(md5_v2, md5_v1);
    let new_funs = fun_infos(&node, "[dg_reg:extra() | dg_reg:make()]");
    assert_eq!(new_funs.len(), 6);
    for (uniq, index, name, arity, free) in &new_funs {
        assert_eq!(uniq, &md5_v2);
        let l = snap.lambda("dg_reg", uniq, *index).unwrap_or_else(|| panic!("v2 lambda {index} ({name})"));
        assert_eq!((&*l.name, l.num_free, l.fun_arity()), (name.as_str(), *free, Some(*arity)));
    }
    for (uniq, index, ..) in &old_funs {
        assert!(snap.lambda("dg_reg", uniq, *index).is_some());
    }

    // Exports, per version and across versions.
    assert!(snap.exports("dg_reg", &md5_v1, "f", 1));
    assert!(!snap.exports("dg_reg", &md5_v1, "f", 2));
    assert!(!snap.exports("dg_reg", &md5_v1, "extra", 0));
    assert!(snap.exports("dg_reg", &md5_v2, "extra", 0));
    assert!(snap.exported_anywhere("dg_reg", "extra", 0));
    assert!(snap.exported_anywhere("dg_reg", "module_info", 1));
    assert!(!snap.exported_anywhere("dg_reg", "nope", 0));
    // A lambda index past the table, an unknown MD5, an unknown module.
    assert!(snap.lambda("dg_reg", &md5_v1, 99).is_none());
    assert!(snap.knows("dg_reg", &[0; 16]).is_none());
    assert!(snap.lookup("no_such_module").is_empty());
}
