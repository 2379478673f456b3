//! Consent to groups (PROTOCOL.md C9): someone who never wrote to the adder
//! is invited instead of added, joins only by accepting, and can decline
//! for good; pending invitations and group memberships per user are capped.

use crate::common;

use actix_web::http::Method;
use common::{Backend, TestApp, WsClient};
use entity::{chat_member, invitation};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{json, Value};

fn error(code: &str, message: &str) -> Value {
    json!({"status": "error", "code": code, "message": message})
}

async fn create(client: &mut WsClient, title: &str, members: &[i64]) -> Value {
    client
        .ask(json!({"type": "create_group", "data": {"title": title, "members": members}}))
        .await
}

async fn member_count(app: &TestApp, pk: &Value) -> u64 {
    let chat = uuid::Uuid::parse_str(pk.as_str().expect("a pk")).expect("a uuid");
    chat_member::Entity::find()
        .filter(chat_member::Column::ChatId.eq(chat))
        .count(&app.db)
        .await
        .expect("count members")
}

async fn consent(backend: &Backend) {
    let app = TestApp::spawn_with(
        backend,
        &[
            ("MAX_PENDING_INVITATIONS", "2"),
            ("MAX_GROUPS_PER_USER", "3"),
        ],
    )
    .await;
    let (_, alice_token) = app.user("alice").await;
    let (bob, bob_token) = app.user("bob").await;
    let (_, carol_token) = app.user("carol").await;
    let mut a = app.authorized(&alice_token).await;
    let mut b = app.authorized(&bob_token).await;
    let mut c = app.authorized(&carol_token).await;

    // Bob never wrote to alice: he is invited, not added.
    let one = create(&mut a, "one", &[bob]).await;
    assert_eq!(one["invited"], json!([bob]), "{}", backend.name());
    assert_eq!(one["members"].as_array().map(Vec::len), Some(1));
    assert_eq!(member_count(&app, &one["pk"]).await, 1);
    assert_eq!(b.recv_type("invitation").await["data"]["pk"], one["pk"]);

    // Declined for good: asking again records and pushes nothing.
    assert_eq!(
        b.ask(json!({"type": "decline_invitation", "data": {"id": one["pk"]}}))
            .await,
        json!({"status": "success", "pk": one["pk"]})
    );
    let again = a
        .ask(json!({"type": "add_members", "data": {"id": one["pk"], "members": [bob]}}))
        .await;
    assert_eq!(again["invited"], json!([bob]));
    b.nothing_before_pong().await;
    for kind in ["accept_invitation", "decline_invitation"] {
        assert_eq!(
            b.ask(json!({"type": kind, "data": {"id": one["pk"]}}))
                .await,
            error("not_found", "conversation not found")
        );
    }
    assert_eq!(
        b.ask(json!({"type": "get_invitations", "data": {}})).await,
        json!([])
    );
    assert_eq!(member_count(&app, &one["pk"]).await, 1);

    // At most MAX_PENDING_INVITATIONS (2) pending: a third is not recorded.
    let two = create(&mut a, "two", &[bob]).await;
    let three = create(&mut a, "three", &[bob]).await;
    for group in [&two, &three] {
        assert_eq!(b.recv_type("invitation").await["data"]["pk"], group["pk"]);
    }
    let four = create(&mut c, "four", &[bob]).await;
    assert_eq!(four["invited"], json!([bob]));
    b.nothing_before_pong().await;
    let pending = b.ask(json!({"type": "get_invitations", "data": {}})).await;
    let pks: Vec<&Value> = pending
        .as_array()
        .expect("a list")
        .iter()
        .map(|i| &i["pk"])
        .collect();
    assert_eq!(pks, [&three["pk"], &two["pk"]], "newest first");
    let bob_pending = invitation::Entity::find()
        .filter(invitation::Column::UserId.eq(bob))
        .filter(invitation::Column::DeclinedAt.is_null())
        .count(&app.db)
        .await
        .unwrap();
    assert_eq!(bob_pending, 2);

    // At most MAX_GROUPS_PER_USER (3) groups: alice is in three.
    assert_eq!(
        create(&mut a, "five", &[]).await,
        error("invalid", "you are in 3 groups already; leave one first")
    );
    // Bob joins two, creates one, and cannot accept a fourth.
    for group in [&two, &three] {
        let joined = b
            .ask(json!({"type": "accept_invitation", "data": {"id": group["pk"]}}))
            .await;
        assert_eq!(joined["members"].as_array().map(Vec::len), Some(2));
    }
    create(&mut b, "bob's", &[]).await;
    let six = create(&mut c, "six", &[bob]).await;
    assert_eq!(b.recv_type("invitation").await["data"]["pk"], six["pk"]);
    assert_eq!(
        b.ask(json!({"type": "accept_invitation", "data": {"id": six["pk"]}}))
            .await,
        error("invalid", "you are in 3 groups already; leave one first")
    );
    // Declining over REST.
    let decline = format!(
        "/api/invitations/{}/decline/",
        six["pk"].as_str().expect("a pk")
    );
    assert_eq!(
        app.rest(Method::POST, &decline, &bob_token, None).await,
        (200, json!({"status": "success", "pk": six["pk"]}))
    );
    assert_eq!(
        app.rest(Method::POST, &decline, &bob_token, None).await,
        (404, json!({"detail": "Not found."}))
    );
    assert_eq!(member_count(&app, &six["pk"]).await, 1);
}

backend_tests!(nobody_is_put_in_a_group_without_consent => consent);
