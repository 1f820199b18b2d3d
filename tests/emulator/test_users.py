"""User lists: the shipped defaults and load_users' error messages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker.emulator import EmulatorUser, default_users, load_users
from broker.emulator.users import DEFAULT_USERS_FILE

CJK = re.compile(r"[\u4e00-\u9fff]")


def test_default_users_cover_the_awkward_cases() -> None:
    users = default_users()
    assert len(users) >= 4
    assert sum(1 for user in users if CJK.search(user.nickname)) >= 4
    assert {"张三", "李四", "王小红"} <= {user.nickname for user in users}
    assert any(any(ord(char) > 0xFFFF for char in user.nickname) for user in users)  # emoji
    assert any(not user.has_qq_avatar_100 for user in users)
    assert any(user.nickname == "" for user in users)
    assert len({user.id for user in users}) == len(users)


def test_default_users_come_from_the_shipped_yaml() -> None:
    assert load_users(DEFAULT_USERS_FILE) == default_users()
    assert default_users() is not default_users()


def test_avatar_key_is_derived_stably_and_url_safe() -> None:
    first, second = EmulatorUser("zhangsan", "张三"), EmulatorUser("zhangsan", "x")
    assert first.avatar_key == second.avatar_key
    assert re.fullmatch(r"[A-Za-z0-9_-]{20,}", first.avatar_key)
    assert EmulatorUser("lisi", "").avatar_key != first.avatar_key
    assert EmulatorUser("a", "", avatar_key="given").avatar_key == "given"


def test_load_users_reads_all_fields(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text(
        '- {id: a, nickname: "甲"}\n'
        '- {id: b, nickname: "", has_qq_avatar_100: false, avatar_key: kB}\n',
        encoding="utf-8",
    )
    a, b = load_users(path)
    assert (a.id, a.nickname, a.has_qq_avatar_100) == ("a", "甲", True)
    assert (b.nickname, b.has_qq_avatar_100, b.avatar_key) == ("", False, "kB")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "non-empty list"),
        ("a: 1\n", "non-empty list"),
        ("- [unclosed\n", "invalid YAML"),
        ("- just-a-string\n", "user #1: expected a mapping"),
        ("- {nickname: x}\n", "user #1: 'id' must be a non-empty string"),
        ("- {id: 12, nickname: x}\n", "'id' must be a non-empty string"),
        ("- {id: a}\n", "'nickname' is required"),
        ("- {id: a, nickname: 12}\n", "'nickname' must be a string"),
        ("- {id: a, nickname: }\n", "'nickname' must be a string"),
        ("- {id: a, nickname: x, has_qq_avatar_100: 'no'}\n", "'has_qq_avatar_100' must be"),
        ("- {id: a, nickname: x, avatar_key: 'a b&c'}\n", "'avatar_key' must be"),
        ("- {id: a, nickname: x, email: e}\n", "unknown key(s) email"),
        (
            "- {id: a, nickname: x}\n- {id: b, nickname: y}\n- {id: a, nickname: z}\n",
            "duplicate user id 'a'",
        ),
    ],
)
def test_load_users_errors_name_file_and_problem(
    tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "bad-users.yaml"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad-users\.yaml") as info:
        load_users(path)
    assert problem in str(info.value)


def test_load_users_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"missing\.yaml: cannot read users file"):
        load_users(tmp_path / "missing.yaml")


def test_load_users_rejects_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "gbk.yaml"
    path.write_bytes("- {id: a, nickname: 张三}\n".encode("gbk"))
    with pytest.raises(ValueError, match=r"gbk\.yaml: users file is not valid UTF-8"):
        load_users(path)


def test_default_users_cover_both_genders_and_a_pinned_unionid() -> None:
    users = {user.id: user for user in default_users()}
    assert {user.gender for user in users.values()} == {"男", "女"}
    assert users["lisi"].gender == "女"
    assert users["wangxiaohong"].unionid == "UID_3C62A0F1B2D4E5F60718293A4B5C6D7E"


def test_bad_gender_and_unionid_are_named(tmp_path: Path) -> None:
    path = tmp_path / "users.yaml"
    path.write_text("- {id: a, nickname: A, gender: x}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="gender"):
        load_users(path)
    path.write_text("- {id: a, nickname: A, unionid: nope}\n", encoding="utf-8")
    with pytest.raises(ValueError, match="unionid"):
        load_users(path)
