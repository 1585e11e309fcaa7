//! The documentation stays true to the code: the configuration table
//! (docs/configuration.md) is the one the declarations generate, and the
//! layout (docs/development.md) names what the tree holds; every link
//! between the README and docs/ leads to a file and a heading that exist.

use std::collections::BTreeSet;
use std::path::Path;

use crate::helpers::SendExt;

/// A documentation file, by its path in the repository.
fn doc(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path} is readable: {e}"))
}

/// The text between two marker lines.
fn between<'a>(text: &'a str, start: &str, end: &str) -> &'a str {
    let a = text
        .find(start)
        .unwrap_or_else(|| panic!("the document lacks {start:?}"));
    let a = a + text[a..].find('\n').expect("a line after the marker") + 1;
    let b = a + text[a..]
        .find(end)
        .unwrap_or_else(|| panic!("the document lacks {end:?}"));
    &text[a..b]
}

#[tokio::test]
async fn the_served_openapi_document_is_the_committed_one() {
    let app = crate::helpers::spawn_app().await;
    let served: serde_json::Value = app
        .client
        .get(app.url("/openapi.json"))
        .sent()
        .await
        .json()
        .await
        .unwrap();
    // The served document states the service's own dimension; the committed
    // copy is the same document for the default one.
    assert_eq!(
        served,
        context_api::routes::openapi::document(crate::helpers::DIM)
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/openapi.json");
    let committed: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("docs/openapi.json")).unwrap();
    let default_dim = context_api::config::default_embedding_dim();
    assert!(
        committed == context_api::routes::openapi::document(default_dim),
        "docs/openapi.json differs from the document the service serves with the \
         default EMBEDDING_DIM: run `cargo run -- openapi > docs/openapi.json` and commit it"
    );
    assert_eq!(
        served["components"]["schemas"]["SearchRequest"]["properties"]["vector"]["maxItems"],
        crate::helpers::DIM
    );
    assert_eq!(served["openapi"], "3.1.0");
    // Every operation states its problems and the bearer scheme applies.
    assert!(served["components"]["securitySchemes"]["bearer"].is_object());
    for (path, item) in served["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if path.starts_with("/contexts") {
                for status in ["401", "422", "503"] {
                    assert!(
                        op["responses"][status].is_object(),
                        "{method} {path} does not document {status}"
                    );
                }
            }
        }
    }
    // The documentation page and its assets come from the binary itself.
    for asset in [
        "/docs",
        "/docs/",
        "/docs/swagger-ui-bundle.js",
        "/docs/swagger-ui.css",
    ] {
        let resp = app.client.get(app.url(asset)).sent().await;
        assert_eq!(resp.status(), 200, "{asset}");
    }
    let page = app
        .client
        .get(app.url("/docs/"))
        .sent()
        .await
        .text()
        .await
        .unwrap();
    assert!(
        !page.contains("http://") && !page.contains("https://"),
        "/docs loads nothing from elsewhere: {page}"
    );
}

#[test]
fn the_configuration_table_is_the_declared_one() {
    let text = doc("docs/configuration.md");
    let table = between(&text, "<!-- settings:", "<!-- /settings -->");
    let declared = context_api::config::markdown_table();
    assert_eq!(
        table, declared,
        "docs/configuration.md's table differs from the declarations: \
         replace it with the output of `cargo run -- config --table`"
    );
}

#[test]
fn the_layout_names_every_module_and_nothing_missing() {
    let text = doc("docs/development.md");
    let layout = &text[text
        .find("## Layout")
        .expect("docs/development.md has ## Layout")..];
    let block = between(layout, "```", "```");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Names in the first column: top-level entries at column 0; src/'s own
    // entries on the lines below it indented by two spaces, several on a
    // line separated by ", ". Deeper indents continue a description.
    let mut listed_src = BTreeSet::new();
    let mut listed_top = BTreeSet::new();
    let mut in_src = false;
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let indent = line.len() - line.trim_start().len();
        let first = line.trim_start().split("  ").next().unwrap_or_default();
        let names = first.split(", ").map(str::trim).filter(|n| !n.is_empty());
        match indent {
            0 => {
                in_src = first == "src/";
                listed_top.extend(names.map(str::to_owned));
            }
            2 if in_src => listed_src.extend(names.map(str::to_owned)),
            _ => {}
        }
    }
    for name in &listed_top {
        assert!(
            root.join(name).exists(),
            "the layout lists {name}, which does not exist"
        );
    }
    for name in &listed_src {
        assert!(
            root.join("src").join(name).exists(),
            "the layout lists src/{name}, which does not exist"
        );
    }
    let mut present = BTreeSet::new();
    for entry in std::fs::read_dir(root.join("src")).unwrap() {
        let entry = entry.unwrap();
        let mut name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_dir() {
            name.push('/');
        }
        present.insert(name);
    }
    let missing: Vec<_> = present.difference(&listed_src).collect();
    assert!(
        missing.is_empty(),
        "the layout leaves out src/ entries: {missing:?}"
    );
}

/// GitHub's anchor for a heading: lower case, punctuation but `-` and `_`
/// dropped, spaces as `-`.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

/// The anchors of a Markdown file's headings (outside code blocks).
fn anchors(text: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in text.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        } else if !fenced && line.starts_with('#') {
            out.insert(anchor(line.trim_start_matches('#')));
        }
    }
    out
}

#[test]
fn links_between_the_readme_and_docs_lead_somewhere() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = vec!["README.md".to_owned()];
    for entry in std::fs::read_dir(root.join("docs")).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".md") {
            files.push(format!("docs/{name}"));
        }
    }
    assert!(files.len() >= 9, "the docs pages: {files:?}");
    let mut broken = vec![];
    for file in &files {
        let text = doc(file);
        let dir = Path::new(file).parent().unwrap();
        let mut fenced = false;
        for line in text.lines() {
            if line.starts_with("```") {
                fenced = !fenced;
            }
            if fenced {
                continue;
            }
            for (_, rest) in line.match_indices("](").map(|(i, _)| ((), &line[i + 2..])) {
                let Some(target) = rest.split(')').next() else {
                    continue;
                };
                if target.starts_with("http")
                    || target.starts_with("mailto:")
                    || target.contains(' ')
                {
                    continue;
                }
                let (path, fragment) = target.split_once('#').unwrap_or((target, ""));
                let resolved = if path.is_empty() {
                    root.join(file)
                } else {
                    root.join(dir).join(path)
                };
                if !resolved.exists() {
                    broken.push(format!("{file}: {target} (no such file)"));
                } else if !fragment.is_empty() && resolved.extension().is_some_and(|e| e == "md") {
                    let text = std::fs::read_to_string(&resolved).unwrap();
                    if !anchors(&text).contains(fragment) {
                        broken.push(format!("{file}: {target} (no such heading)"));
                    }
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}
