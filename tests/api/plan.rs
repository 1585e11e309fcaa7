//! The plan guard: search must use the HNSW index wherever the index is the
//! faster plan. A table of 10,000 contexts x 768 dimensions, with clustered
//! vectors, realistic content and the schema the migrations build, is searched
//! with the very statement the store sends, prepared and executed more times
//! than PostgreSQL's plan cache needs to settle (five custom plans, then
//! perhaps a generic one). The plan that the next execution would use must be:
//! - unfiltered: an HNSW index scan;
//! - filtered to a big user (half the rows): the store chooses the index plan,
//!   and the statement scans the HNSW index;
//! - filtered to a small user (about 10 rows): the store chooses the exact
//!   plan, and the statement reads the user's rows through its btree and never
//!   the HNSW index (at 300,000 rows this measured 1 ms against 39 ms for an
//!   iterative HNSW scan; bench/README.md, Scale);
//! - with a 1% metadata filter: the GIN bitmap scan and an exact sort, which
//!   measured 0.8 ms against 15 to 24 ms for an iterative HNSW scan at this size.

use context_api::domain::{json_object, Ranking, SearchFilter, TopK, UserId};
use context_api::store::{
    search_query, text_search_query, Store, VectorIndex, VectorPlan, VectorScan,
};
use serde_json::{json, Value};
use sqlx::{Executor, PgPool, Row};
use uuid::Uuid;

use crate::helpers::TestDb;

const DIM: usize = 768;
const ROWS: i64 = 10_000;
/// One big user with half the rows, and 499 small ones sharing the rest: as
/// in a real service, the average user is small, and a generic plan's
/// estimate for `user_id = $1` is the average's.
const USERS: i64 = 500;
const HNSW: &str = "contexts_embedding_hnsw_idx";
const GIN: &str = "contexts_metadata_idx";
const TSV: &str = "contexts_embedding_tsv_idx";

/// 100 clusters in 768-d, each row its centroid plus noise, normalized; 500
/// users (the first with half the rows) and a metadata tag on 1% of rows,
/// both independent of the clusters.
async fn seed(pool: &PgPool) {
    let sql = format!(
        "CREATE TEMP TABLE cent AS
           SELECT c, array_agg((random() - 0.5)::real) AS v
           FROM generate_series(0, 99) c, generate_series(1, {DIM}) d GROUP BY c;
         CREATE TEMP TABLE users AS SELECT array_agg(gen_random_uuid()) AS ids FROM generate_series(1, {USERS});
         INSERT INTO contexts (id, user_id, context_type, content, embedding, embedding_text,
                               embedding_status, metadata)
         SELECT gen_random_uuid(),
                users.ids[CASE WHEN random() < 0.5 THEN 1 ELSE 2 + floor(random() * ({USERS} - 1))::int END], 'note',
                jsonb_build_object('text', repeat('a memory of realistic length ', 12), 'n', i),
                l2_normalize((SELECT array_agg(x + ((random() - 0.5) * 0.4)::real) FROM unnest(cent.v) x)::vector),
                repeat('a memory of realistic length ', 12), 'ready',
                jsonb_build_object('tag', CASE WHEN random() < 0.01 THEN 'rare' ELSE 'common' END, 'n', i)
         FROM generate_series(1, {ROWS}) i CROSS JOIN users JOIN cent ON cent.c = i % 100;
         ANALYZE contexts;"
    );
    pool.execute(sql.as_str())
        .await
        .expect("seed the plan-guard table");
}

/// Index names of every node in an EXPLAIN (FORMAT JSON) plan, with node types.
fn nodes(plan: &Value, out: &mut Vec<String>) {
    let name = plan["Node Type"].as_str().unwrap_or("?");
    match plan["Index Name"].as_str() {
        Some(index) => out.push(format!("{name} on {index}")),
        None => out.push(name.to_owned()),
    }
    for child in plan["Plans"].as_array().into_iter().flatten() {
        nodes(child, out);
    }
}

/// The plan the next execution of the store's prepared search will use.
async fn settled_plan(
    pool: &PgPool,
    query: &[f32],
    filter: &SearchFilter,
    plan: VectorPlan,
    index: VectorIndex,
) -> Vec<String> {
    let k = TopK::parse(Some(10)).unwrap();
    let scan = VectorScan {
        plan,
        index,
        dim: DIM,
        ef_search: context_api::store::DEFAULT_EF_SEARCH,
    };
    let statement = search_query(query, filter, k, scan);
    let sql = statement.sql().to_owned();
    // The same parameters, as literals, in the order the builder bound them.
    let literal: Vec<String> = query.iter().map(f32::to_string).collect();
    let mut args = vec![format!("'[{}]'", literal.join(","))];
    if let Some(u) = filter.user_id {
        args.push(format!("'{}'", u.0));
    }
    if let Some(m) = &filter.metadata {
        args.push(format!("'{}'", Value::Object(m.clone())));
    }
    // The exact plan reads no index, whatever its form.
    let index = if plan == VectorPlan::Exact {
        VectorIndex::Vector
    } else {
        index
    };
    args.push(format!(
        "'{}'",
        index.ef_search(k.get(), context_api::store::DEFAULT_EF_SEARCH)
    ));
    args.push(index.candidates(k.get()).to_string());
    if index == VectorIndex::Bit {
        args.push(k.get().to_string());
    }
    let args = args.join(", ");

    let mut conn = pool.acquire().await.unwrap();
    next_plan(&mut conn, &sql, &args).await
}

/// `sql` prepared on `conn` and executed with `args` more times than the plan
/// cache needs to settle; the nodes of the plan the next execution will use.
async fn next_plan(conn: &mut sqlx::PgConnection, sql: &str, args: &str) -> Vec<String> {
    conn.execute(format!("PREPARE guard AS {sql}").as_str())
        .await
        .expect("the store's search statement prepares");
    for _ in 0..8 {
        conn.execute(format!("EXECUTE guard({args})").as_str())
            .await
            .expect("the store's search statement runs");
    }
    let row = sqlx::query(&format!("EXPLAIN (FORMAT JSON) EXECUTE guard({args})"))
        .fetch_one(&mut *conn)
        .await
        .unwrap();
    conn.execute("DEALLOCATE guard").await.unwrap();
    let explained: Value = row.get(0);
    let mut out = Vec::new();
    nodes(&explained[0]["Plan"], &mut out);
    out
}

fn uses(plan: &[String], index: &str) -> bool {
    plan.iter().any(|n| n.ends_with(&format!(" on {index}")))
}

#[tokio::test]
async fn search_uses_the_index_where_it_is_faster() {
    let db = TestDb::create(DIM).await;
    let pool = db.pool().await;
    seed(&pool).await;

    let store = Store::from_pool(pool.clone(), &crate::helpers::schema(DIM));
    let query = a_vector(&pool).await;
    let (big, small) = big_and_small_user(&pool).await;
    let none = SearchFilter {
        user_id: None,
        context_type: None,
        metadata: None,
        min_score: None,
    };
    let by_big_user = SearchFilter {
        user_id: Some(UserId(big)),
        ..none.clone()
    };
    let by_small_user = SearchFilter {
        user_id: Some(UserId(small)),
        ..none.clone()
    };
    let by_tag = SearchFilter {
        metadata: Some(json_object("metadata", json!({"tag": "rare"})).unwrap()),
        ..none.clone()
    };

    for index in VectorIndex::ALL {
        store.switch_vector_index(index).await.unwrap();
        let index_name = index.as_str();
        assert_eq!(store.vector_plan(&none).await, VectorPlan::Global);
        let plan = settled_plan(&pool, &query, &none, VectorPlan::Global, index).await;
        assert!(
            uses(&plan, HNSW),
            "unfiltered search must scan the {index_name} HNSW index, plan: {plan:?}"
        );

        assert_eq!(
            store.vector_plan(&by_big_user).await,
            VectorPlan::Index,
            "a user with half of 10,000 rows is over the exact limit"
        );
        let plan = settled_plan(&pool, &query, &by_big_user, VectorPlan::Index, index).await;
        assert!(
            uses(&plan, HNSW),
            "a big user's search must scan the {index_name} HNSW index, plan: {plan:?}"
        );

        assert_eq!(
            store.vector_plan(&by_small_user).await,
            VectorPlan::Exact,
            "a user with about 10 rows is under the exact limit"
        );
        let plan = settled_plan(&pool, &query, &by_small_user, VectorPlan::Exact, index).await;
        assert!(
            !uses(&plan, HNSW) && plan.iter().any(|n| n.contains(" on contexts_user_")),
            "a small user's search must read its rows by the user's btree and sort them ({index_name}), plan: {plan:?}"
        );
        let plan = settled_plan(&pool, &query, &by_tag, VectorPlan::Global, index).await;
        assert!(
            uses(&plan, GIN) && !uses(&plan, HNSW),
            "a 1% metadata filter is fastest as a GIN bitmap scan and an exact sort at 10,000 rows ({index_name}), plan: {plan:?}"
        );
    }
}

/// The search results of both plans are the user's own, best first; the
/// exact plan's are exactly the true top k.
#[tokio::test]
async fn both_plans_return_the_users_nearest() {
    let db = TestDb::create(DIM).await;
    let pool = db.pool().await;
    seed(&pool).await;
    let store = Store::from_pool(pool.clone(), &crate::helpers::schema(DIM));
    let query = a_vector(&pool).await;
    let (big, small) = big_and_small_user(&pool).await;
    let k = TopK::parse(Some(10)).unwrap();
    let cases = VectorIndex::ALL.into_iter().flat_map(|index| {
        [(small, VectorPlan::Exact), (big, VectorPlan::Index)].map(|(u, p)| (index, u, p))
    });
    for (index, user, expected_plan) in cases {
        store.switch_vector_index(index).await.unwrap();
        let filter = SearchFilter {
            user_id: Some(UserId(user)),
            context_type: None,
            metadata: None,
            min_score: None,
        };
        assert_eq!(store.vector_plan(&filter).await, expected_plan);
        let hits = store
            .search(&Ranking::Vector(query.clone()), &filter, k)
            .await
            .unwrap();
        let exact: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM contexts WHERE user_id = $1 ORDER BY embedding <=> $2::vector, id LIMIT 10",
        )
        .bind(user)
        .bind(pgvector::Vector::from(query.clone()))
        .fetch_all(&pool)
        .await
        .unwrap();
        let got: Vec<Uuid> = hits.iter().map(|(c, _)| c.id.0).collect();
        assert_eq!(got.len(), 10);
        assert!(hits.iter().all(|(c, _)| c.user_id.0 == user));
        assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1), "best first");
        let found = got.iter().filter(|id| exact.contains(id)).count();
        if expected_plan == VectorPlan::Exact {
            assert_eq!(got, exact, "the exact plan is exact ({})", index.as_str());
        } else {
            assert!(
                found >= 8,
                "the index plan ({}) found {found} of the true 10",
                index.as_str()
            );
        }
    }
}

/// The vector of a stored row (the first by id): a query with neighbours.
async fn a_vector(pool: &PgPool) -> Vec<f32> {
    let v: pgvector::Vector =
        sqlx::query_scalar("SELECT embedding FROM contexts ORDER BY id LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap();
    v.to_vec()
}

/// The user with the most rows, and a small one with at least 10.
async fn big_and_small_user(pool: &PgPool) -> (Uuid, Uuid) {
    let users: Vec<(Uuid, i64)> = sqlx::query_as(
        "SELECT user_id, count(*) FROM contexts GROUP BY user_id ORDER BY count(*) DESC, user_id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let small = users.iter().rev().find(|(_, n)| *n >= 10).unwrap().0;
    (users[0].0, small)
}

/// The scan's settings ride in the statement: filtered searches still find k
/// rows (iterative scan on), and the pooled connection keeps its own settings.
#[tokio::test]
async fn search_settings_apply_to_the_statement_only() {
    let db = TestDb::create(DIM).await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    seed(&pool).await;
    let store = Store::from_pool(pool.clone(), &crate::helpers::schema(DIM));
    let query = pgvector::Vector::from(a_vector(&pool).await);
    let (user, _) = big_and_small_user(&pool).await;
    let filter = SearchFilter {
        user_id: Some(UserId(user)),
        context_type: None,
        metadata: None,
        min_score: None,
    };
    assert_eq!(store.vector_plan(&filter).await, VectorPlan::Index);
    let k = TopK::parse(Some(50)).unwrap();
    let hits = store
        .search(&Ranking::Vector(query.to_vec()), &filter, k)
        .await
        .unwrap();
    assert_eq!(
        hits.len(),
        50,
        "an iterative scan fills k under a user filter"
    );
    assert!(hits.iter().all(|(c, _)| c.user_id.0 == user));
    assert!(hits.windows(2).all(|w| w[0].1 >= w[1].1), "best first");

    let (ef, iterative): (String, String) = sqlx::query_as(
        "SELECT current_setting('hnsw.ef_search'), current_setting('hnsw.iterative_scan')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        (ef.as_str(), iterative.as_str()),
        ("40", "off"),
        "settings leaked to the pooled connection"
    );
}

/// The plan the next execution of the store's prepared text search will use,
/// for a query every row matches (the seed's text is in every row).
async fn settled_text_plan(pool: &PgPool, filter: &SearchFilter, plan: VectorPlan) -> Vec<String> {
    let k = TopK::parse(Some(10)).unwrap();
    let statement = text_search_query("english", "realistic memory", filter, k, plan);
    let sql = statement.sql().to_owned();
    // The builder's binds, in order: the configuration and the text twice
    // (the query, its lexemes), the user, k.
    let mut args = vec![
        "'english'",
        "'realistic memory'",
        "'english'",
        "'realistic memory'",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    if let Some(u) = filter.user_id {
        args.push(format!("'{}'", u.0));
    }
    args.push(k.get().to_string());
    let args = args.join(", ");
    let mut conn = pool.acquire().await.unwrap();
    // The text index made as tempting as it was at a million rows, where the
    // planner took it (every row of the table) beside the user's btree: here
    // the only way to the matching rows but a scan it is told to avoid.
    conn.execute("BEGIN; DROP INDEX contexts_user_created_idx, contexts_user_id_context_type_idx; SET LOCAL enable_seqscan = off")
        .await
        .unwrap();
    let plan = next_plan(&mut conn, &sql, &args).await;
    conn.execute("ROLLBACK").await.unwrap();
    plan
}

/// A text search filtered to a small user matches that user's rows one by
/// one and never reads the whole table's text index: at a million rows the
/// planner combined the user's btree with the text index, which for a word
/// every row holds returned every row of the table, and a user of 10 rows
/// waited 140 ms (bench/results/scale-1000000-halfvec-m24.md). A big user's
/// search may use the index.
#[tokio::test]
async fn a_small_users_text_search_reads_its_rows_not_the_tables_text_index() {
    let db = TestDb::create(DIM).await;
    let pool = db.pool().await;
    seed(&pool).await;
    let store = Store::from_pool(pool.clone(), &crate::helpers::schema(DIM));
    let (big, small) = big_and_small_user(&pool).await;
    let by = |u: Uuid| SearchFilter {
        user_id: Some(UserId(u)),
        context_type: None,
        metadata: None,
        min_score: None,
    };
    assert_eq!(store.text_plan(&by(small)).await, VectorPlan::Exact);
    let plan = settled_text_plan(&pool, &by(small), VectorPlan::Exact).await;
    assert!(
        !uses(&plan, TSV),
        "a small user's text search must never read the table's text index, plan: {plan:?}"
    );
    // Its results are the user's own, every one of its rows a match.
    let hits = store
        .search(
            &Ranking::Text("realistic memory".into()),
            &by(small),
            TopK::parse(Some(50)).unwrap(),
        )
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM contexts WHERE user_id = $1")
        .bind(small)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(hits.len() as i64, rows.min(50));
    assert!(hits.iter().all(|(c, _)| c.user_id.0 == small));

    // A user over 2,000 rows (TEXT_SCAN_ROWS) goes through the text index,
    // which finds the few rows of a rare word at once.
    assert_eq!(store.text_plan(&by(big)).await, VectorPlan::Index);
    let plan = settled_text_plan(&pool, &by(big), VectorPlan::Index).await;
    assert!(uses(&plan, TSV), "{plan:?}");
}
