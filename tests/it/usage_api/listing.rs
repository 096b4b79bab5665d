//! `GET /v1/tenants` on the policy table reads its `by-plan` index a page at a time: every tenant
//! is listed once across the pages, with its plan; one plan's tenants come in tenant order; a
//! cursor resumes any listing after its tenant (whatever became of that tenant meanwhile), and
//! one not of its form is refused.

use std::collections::BTreeSet;

use crate::support::emulator::admin_client;
use reqwest::StatusCode;
use serde_json::Value;
use tollgate::policy_table::record::tenant_item;
use tollgate::policy_table::write::{self, Expect};
use tollgate::policy_table::{PK, TenantRecord, tenant_pk};

use super::World;

/// Every page of `query` (`limit` a page) from the start or from the cursor `from`, following
/// `next_cursor`: the (tenant, plan) pairs in the order listed, and the cursors handed out.
async fn pages_from(w: &World, query: &str, limit: usize, from: Option<&str>) -> (Vec<(String, String)>, Vec<String>) {
    let (mut listed, mut cursors) = (Vec::new(), Vec::new());
    let mut path = format!("/v1/tenants?limit={limit}{query}");
    if let Some(c) = from {
        path = format!("{path}&cursor={c}");
    }
    loop {
        let page: Value = w.get_json(&path).await;
        let tenants = page["tenants"].as_array().unwrap_or_else(|| panic!("{path}: {page}"));
        assert!(tenants.len() <= limit, "{page}");
        for t in tenants {
            let s = |k: &str| t[k].as_str().expect("a string").to_owned();
            listed.push((s("tenant"), s("plan")));
        }
        match page["next_cursor"].as_str() {
            Some(c) => {
                cursors.push(c.to_owned());
                path = format!("/v1/tenants?limit={limit}{query}&cursor={c}");
            }
            None => return (listed, cursors),
        }
    }
}

/// Every page of `query`, from the start.
async fn all_pages(w: &World, query: &str, limit: usize) -> (Vec<(String, String)>, Vec<String>) {
    pages_from(w, query, limit, None).await
}

#[tokio::test]
async fn tenants_are_listed_a_page_at_a_time_each_once_from_the_index() {
    // GIVEN 23 tenants on free and 12 on pro in the policy table, as plan sync writes them
    let (w, _registry, sdk, table) = World::on_policy_table("tg-list-1").await;
    let dynamodb = admin_client(&sdk);
    let mut want = BTreeSet::new();
    for i in 0..35 {
        let (tenant, plan) = (format!("t-{i:02}"), if i % 3 == 0 { "pro" } else { "free" });
        let mut item = tenant_item(&TenantRecord::on(plan));
        item.insert(
            PK.into(),
            aws_sdk_dynamodb::types::AttributeValue::S(tenant_pk(&tenant)),
        );
        (dynamodb.put_item().table_name(&table).set_item(Some(item)))
            .send()
            .await
            .expect("tenant item");
        want.insert((tenant, plan.to_owned()));
    }
    // WHEN all of them are listed 5 a page, and free's 4 a page
    let (all, cursors) = all_pages(&w, "", 5).await;
    let (free, free_cursors) = all_pages(&w, "&plan=free", 4).await;
    // THEN each tenant is listed once, with its plan, in 7 pages
    assert_eq!(all.len(), want.len(), "{all:?}");
    assert_eq!(all.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert_eq!(cursors.len(), 6);
    // AND free's, in tenant order, only free's
    let want_free: Vec<_> = want.iter().filter(|(_, p)| p == "free").cloned().collect();
    assert_eq!(free, want_free);
    // AND a cursor of free's listing resumes pro's after the same tenant id
    let after = &free[3].0;
    let path = format!("/v1/tenants?plan=pro&limit=50&cursor={}", free_cursors[0]);
    let rest: Value = w.get_json(&path).await;
    let pro: Vec<&str> = (rest["tenants"].as_array().expect("tenants").iter())
        .map(|t| t["tenant"].as_str().expect("id"))
        .collect();
    let want_pro: Vec<&str> = (want.iter())
        .filter(|(t, p)| p == "pro" && t > after)
        .map(|(t, _)| t.as_str())
        .collect();
    assert_eq!(pro, want_pro);
    // AND a cursor not of the form pages give is refused
    for query in ["?cursor=t-03", "?cursor=7a.", "?plan=free&cursor=zz.7a"] {
        let answer = (w.admin(reqwest::Method::GET, &format!("/v1/tenants{query}")))
            .send()
            .await
            .expect("answer");
        assert_eq!(answer.status(), StatusCode::BAD_REQUEST, "{query}");
    }
}

#[tokio::test]
async fn a_tenant_offboarded_or_moved_between_pages_leaves_the_rest_of_the_listing_whole() {
    // GIVEN 12 tenants on free, written through the write protocol as every writer does
    let (w, _registry, sdk, table) = World::on_policy_table("tg-list-2").await;
    let dynamodb = admin_client(&sdk);
    let put = |tenant: String, plan: &'static str, expect: Expect| {
        let (dynamodb, table) = (dynamodb.clone(), table.clone());
        async move {
            let pk = tenant_pk(&tenant);
            let item = tenant_item(&TenantRecord::on(plan));
            let written = write::put(&dynamodb, &table, &pk, item, &expect)
                .await
                .expect("written");
            assert_eq!(written, write::Written::Done, "{pk}");
        }
    };
    let tenants: Vec<String> = (0..12).map(|i| format!("t-{i:02}")).collect();
    for t in &tenants {
        put(t.clone(), "free", Expect::Absent).await;
    }
    // WHEN the first page of free's tenants (4) is read, then the tenant its cursor names is
    // offboarded (its tombstone) and a tenant not yet listed is moved to pro, then the listing
    // goes on from the cursor
    let first: Value = w.get_json("/v1/tenants?plan=free&limit=4").await;
    let cursor = first["next_cursor"].as_str().expect("a cursor").to_owned();
    let pk = tenant_pk(&tenants[3]);
    write::delete(&dynamodb, &table, &pk, &Expect::At(1))
        .await
        .expect("offboarded");
    put(tenants[7].clone(), "pro", Expect::At(1)).await;
    let (rest, _) = pages_from(&w, "&plan=free", 4, Some(&cursor)).await;
    // THEN the rest lists every later tenant still on free once, in order: not the offboarded
    // one, not the moved one, none skipped
    let want: Vec<(String, String)> = (tenants[4..].iter())
        .filter(|t| *t != &tenants[7])
        .map(|t| (t.clone(), "free".to_owned()))
        .collect();
    assert_eq!(rest, want);
    // AND listing all tenants afresh shows the offboarded one nowhere, the moved one on pro
    let (all, _) = all_pages(&w, "", 5).await;
    assert!(!all.iter().any(|(t, _)| t == &tenants[3]), "{all:?}");
    assert!(all.contains(&(tenants[7].clone(), "pro".to_owned())), "{all:?}");
    assert_eq!(all.len(), 11, "{all:?}");
}
