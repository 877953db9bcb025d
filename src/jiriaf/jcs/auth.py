"""API tokens: random bearer tokens of which only the sha256 is stored; a token names a user and
whether that user is an admin."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from jiriaf.errors import UserError
from jiriaf.jcs import trail
from jiriaf.jcs.models import ApiToken, utcnow
from jiriaf.jcs.schemas import USER_NAME

TOKEN_PREFIX = "jcs_"


@dataclass(frozen=True)
class Principal:
    user: str
    admin: bool


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def check_user_name(user: str) -> str:
    if not re.fullmatch(USER_NAME, user):
        raise UserError(f"user name {user!r} must be lowercase letters, digits, '.', '_' or '-' (at most 64)")
    return user


async def create_token(session: AsyncSession, user: str, admin: bool = False, label: str = "") -> str:
    """Store the hash of a new token for ``user`` and return the token (shown once, never stored)."""
    check_user_name(user)
    token = new_token()
    row = ApiToken(user=user, admin=admin, token_hash=hash_token(token), label=label)
    session.add(row)
    await session.flush()
    trail.record(
        session,
        trail.SYSTEM,
        "token.created",
        "token",
        row.id,
        f"token {row.id} for {'admin ' if admin else ''}user {user}" + (f" ({label})" if label else ""),
        data={"user": user, "admin": admin},
    )
    await session.commit()
    return token


async def revoke_token(session: AsyncSession, token_id: int) -> ApiToken:
    row = await session.get(ApiToken, token_id)
    if row is None:
        raise UserError(f"no token {token_id}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        trail.record(
            session, trail.SYSTEM, "token.revoked", "token", token_id, f"token {token_id} of {row.user}"
        )
        await session.commit()
    return row


async def authenticate(session: AsyncSession, token: str) -> Principal | None:
    """The principal a bearer token stands for, or None."""
    if not token or len(token) > 200:
        return None
    digest = hash_token(token)
    row = (
        await session.execute(
            select(ApiToken).where(ApiToken.token_hash == digest, ApiToken.revoked_at.is_(None))
        )
    ).scalar_one_or_none()
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    return Principal(row.user, row.admin)
