"""Password hashing (argon2id) and the rules a new password must meet."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from onebox.errors import InvalidInputError, Problem

MIN_LENGTH = 10
_HASHER = PasswordHasher()  # argon2id with the library's current recommended parameters


def check_strength(password: str, username: str = "", field_name: str = "password") -> None:
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(Problem(field_name, f"is shorter than {MIN_LENGTH} characters", "use a longer one"))
    if username and password.casefold() == username.casefold():
        problems.append(Problem(field_name, "equals the user name", "choose something else"))
    if len(set(password)) < 4:
        problems.append(Problem(field_name, "has fewer than 4 distinct characters", "mix more characters"))
    if problems:
        raise InvalidInputError("the password is too weak", problems=problems)


def hash_password(password: str) -> str:
    return _HASHER.hash(password)


def verify_password(stored_hash: str, password: str) -> bool:
    """True when ``password`` matches; argon2's check is constant-time in the secret."""
    try:
        return _HASHER.verify(stored_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored_hash: str) -> bool:
    return _HASHER.check_needs_rehash(stored_hash)


DUMMY_HASH = _HASHER.hash("onebox-dummy-password-for-timing")
"""Verified against when the user does not exist, so the answer takes as long either way."""
