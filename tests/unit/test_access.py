"""Who may control whose transaction, and whom tasks may run as (zsvc.daemon.access).

The rules are pure but for the group database, which each test replaces with a table of
its own (``groups_of``): no user here needs to exist.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from zsvc.daemon.access import (
    ROOT,
    AccessRules,
    Grant,
    Principal,
    Who,
    parse_grant,
    parse_whom,
    refusal,
    rules_of,
)
from zsvc.daemon.settings import parse
from zsvc.errors import ConfigError

ALICE = Principal(1001, 1001, "alice")
BOB = Principal(1002, 1002, "bob")
CAROL = Principal(1003, 1003, "carol")
KEY_CI = Principal(None, None, "key:ci", key="ci")
"""A remote client's key acting as nobody here."""
KEY_AS_ALICE = Principal(1001, 1001, "alice", key="laptop")
"""A remote client's key acting as alice."""
GROUPS = {"alice": {"alice", "web"}, "bob": {"bob", "ops"}, "carol": {"carol", "devs"}}


def groups_of(principal: Principal) -> frozenset[str]:
    return frozenset(GROUPS.get(principal.name, ()))


def rules(text: str) -> AccessRules:
    """The rules of an ``[access]`` section, with this module's group table."""
    parsed = parse("[access]\n" + text, "z.conf").access
    return AccessRules(parsed.control, parsed.run_as, groups_of=groups_of)


NAMES = st.sampled_from(["alice", "bob", "carol", "dave", "root", "www-data"])
PRINCIPALS = st.sampled_from([ROOT, ALICE, BOB, CAROL, KEY_CI, KEY_AS_ALICE])
IDS = st.text(st.sampled_from("abcweb-*?[]!0"), min_size=1, max_size=8)
WHO = st.builds(Who, st.sampled_from(["user", "group", "key"]), NAMES | st.just("ops"))
GRANTS = st.lists(
    st.tuples(
        st.sampled_from(["control", "run_as"]),
        st.builds(Grant, st.none() | IDS, st.lists(WHO, min_size=1, max_size=3).map(tuple)),
    ),
    max_size=4,
)


def test_without_grants_root_and_the_owner_control_and_no_one_else() -> None:
    none = AccessRules(groups_of=groups_of)
    assert none.may_control(ROOT, ALICE, "web-1")
    assert none.may_control(ALICE, ALICE, "web-1")
    assert none.may_control(KEY_AS_ALICE, ALICE, "web-1")  # a key acting as alice is alice
    assert not none.may_control(BOB, ALICE, "web-1")
    assert not none.may_control(KEY_CI, ALICE, "web-1")
    assert not none.may_control(ALICE, ROOT, "old")  # made before owners: root's
    assert none.may_control(KEY_CI, KEY_CI, "ci-1")
    assert none.may_administer(ROOT) and not none.may_administer(ALICE)


def test_control_grants_all_transactions_or_some_by_pattern() -> None:
    granted = rules("control = group:ops\ncontrol.web-* = user:carol key:ci\n")
    assert granted.may_control(BOB, ALICE, "db-1")  # bob is in ops
    assert granted.may_control(CAROL, ALICE, "web-1")
    assert not granted.may_control(CAROL, ALICE, "db-1")
    assert not granted.may_control(CAROL, ALICE, "Web-1")  # patterns are case-sensitive
    assert granted.may_control(KEY_CI, ALICE, "web-2")
    # Only the plain key (every transaction) also grants shutdown and reexec.
    assert granted.may_administer(BOB)
    assert not granted.may_administer(CAROL) and not granted.may_administer(KEY_CI)


def test_run_as_defaults_and_grants() -> None:
    granted = rules(
        "run_as.www-data = user:alice\nrun_as.app-* = group:devs\nrun_as.* = user:bob\n"
    )
    assert granted.may_run_as(ALICE, "alice") and granted.may_run_as(ALICE, "web")  # own group
    assert granted.may_run_as(ALICE, "www-data")
    assert not granted.may_run_as(ALICE, "nobody")
    assert granted.may_run_as(CAROL, "app-api") and not granted.may_run_as(CAROL, "www-data")
    assert granted.may_run_as(BOB, "nobody")
    assert not granted.may_run_as(BOB, "root")  # a glob never grants root
    assert not granted.may_run_as(KEY_CI, "nobody")  # nobody here: no user, no groups
    assert rules("run_as.root = user:bob\n").may_run_as(BOB, "root")  # named, it does
    assert ROOT == ROOT and AccessRules().may_run_as(ROOT, "anyone")


@settings(max_examples=300, deadline=None)
@given(GRANTS, PRINCIPALS, PRINCIPALS, IDS)
def test_grants_only_ever_add(
    grants: list[tuple[str, Grant]], who: Principal, owner: Principal, transaction: str
) -> None:
    """Whatever the grants, root and the owner keep control, and a grant never takes
    away what fewer grants allowed."""
    full = AccessRules(*_split(grants), groups_of=groups_of)
    fewer = AccessRules(*_split(grants[:-1]), groups_of=groups_of)
    assert full.may_control(ROOT, owner, transaction)
    assert full.may_control(owner, owner, transaction)
    assert full.may_run_as(ROOT, "root")
    if fewer.may_control(who, owner, transaction):
        assert full.may_control(who, owner, transaction)
    for identity in ("root", "www-data", who.name):
        if fewer.may_run_as(who, identity):
            assert full.may_run_as(who, identity)
    if full.may_administer(who):
        assert full.may_control(who, owner, transaction)


@settings(max_examples=300, deadline=None)
@given(GRANTS, st.sampled_from([ALICE, BOB, CAROL, KEY_CI]), IDS)
def test_no_grant_naming_someone_else_lets_a_stranger_in(
    grants: list[tuple[str, Grant]], who: Principal, transaction: str
) -> None:
    """Grants that name neither *who*, nor their key, nor one of their groups leave
    them out of another's transaction, of the daemon and of root."""
    mine = {f"user:{who.name}", f"key:{who.key}", *(f"group:{g}" for g in groups_of(who))}
    foreign = [
        (kind, Grant(grant.target, tuple(w for w in grant.whom if str(w) not in mine)))
        for kind, grant in grants
    ]
    others = AccessRules(*_split([g for g in foreign if g[1].whom]), groups_of=groups_of)
    owner = ALICE if who is not ALICE else BOB
    assert not others.may_control(who, owner, transaction)
    assert not others.may_administer(who)
    assert not others.may_run_as(who, "root")


def _split(grants: list[tuple[str, Grant]]) -> tuple[tuple[Grant, ...], tuple[Grant, ...]]:
    made = rules_of(grants)
    return made.control, made.run_as


def test_the_refusal_names_the_owner_and_where_grants_live() -> None:
    assert refusal(ALICE, "web-1", "stop") == (
        "transaction web-1 belongs to alice; only alice, root, or a grant in"
        " /etc/zsvc/zsvc.conf [access] may stop it"
    )


def test_the_access_section_is_read_with_case_kept_after_the_dot() -> None:
    text = "[access]\nControl = user:Bob\ncontrol.Web-* = group:web\nrun_as.WWW = key:ci\n"
    access = parse(text, "z.conf").access
    assert access.control == (
        Grant(None, (Who("user", "Bob"),)),
        Grant("Web-*", (Who("group", "web"),)),
    )
    assert access.run_as == (Grant("WWW", (Who("key", "ci"),)),)


def test_every_bad_access_line_is_reported_with_its_line() -> None:
    text = (
        "[access]\ncontrol = ops\nrun_as = user:alice\ncontrol.web =\n"
        "ctl.x = user:bob\nrun_as.app = group:\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse(text, "z.conf")
    assert [str(issue) for issue in caught.value.issues] == [
        "z.conf:2:1: control: 'ops' is not user:NAME, group:NAME or key:NAME",
        "z.conf:3:1: run_as: unknown setting 'run_as' in [access]; known: control,"
        " control.PATTERN, run_as.USER_OR_GROUP",
        "z.conf:4:1: control.web: names nobody; expected user:NAME, group:NAME or key:NAME",
        "z.conf:5:1: ctl.x: unknown setting 'ctl.x' in [access]; known: control,"
        " control.PATTERN, run_as.USER_OR_GROUP",
        "z.conf:6:1: run_as.app: 'group:' is not user:NAME, group:NAME or key:NAME",
    ]


TOKENS = st.builds(
    lambda kind, name: f"{kind}:{name}",
    st.sampled_from(["user", "group", "key"]),
    st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(TOKENS, min_size=1, max_size=5), st.sampled_from([" ", "  ", "\t"]))
def test_whom_round_trips(tokens: list[str], blank: str) -> None:
    assert [str(who) for who in parse_whom(blank.join(tokens))] == tokens


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30), st.text(max_size=40))
def test_a_grant_line_parses_or_says_why(key: str, value: str) -> None:
    """Any key and value: a grant, or a ValueError (never another exception)."""
    try:
        kind, grant = parse_grant(key, value)
    except ValueError as exc:
        assert str(exc)
        return
    assert kind in ("control", "run_as") and grant.whom
    assert key == kind if grant.target is None else key == f"{kind}.{grant.target}"


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=120))
def test_any_access_section_parses_or_reports(body: str) -> None:
    try:
        parse("[access]\n" + body, "z.conf")
    except ConfigError as exc:
        assert exc.issues
