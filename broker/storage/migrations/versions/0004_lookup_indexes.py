"""Index the two columns a hot path searches without one.

* ``login_transactions.browser_digest``: every ``/authorize`` that goes to QQ calls
  ``cap_pending_logins``, which selects and deletes a browser's pending logins by this
  column. Rows stay until purged after they expire, so a busy broker holds tens of
  thousands, and each of those requests scanned them all (SQLite: 0.35 ms at 0 rows,
  5.5 ms at 20,000; PostgreSQL 13.6 ms at 20,000).
* ``refresh_tokens.family_expires_at``: ``purge_expired`` (the housekeeping job, and
  inline in ``/authorize`` every few minutes) deletes refresh tokens by this column,
  not by ``expires_at``, because a used link must stay until its whole family expires.
  It is the only purge condition without an index, on the table whose rows live the
  longest, so every purge batch scanned all refresh tokens, even when none was due.

Checked and left alone: ``consume_login`` looks up ``state_digest``, the primary key
(``browser_digest`` is only a second condition on that one row); every other table is
purged by an indexed ``expires_at``; the token endpoint and userinfo look up primary
keys and indexed columns. ``authorization_codes.sid`` (logout) and ``client_id`` of the
code and token tables (admin commands) have no index, but they are not on a hot path,
and codes live minutes.

A plain ``CREATE INDEX`` (migrations run in one transaction, which ``CONCURRENTLY``
cannot): on PostgreSQL it blocks writes to the two tables while it builds, about a
second per million rows.

Revision ID: 0004
Revises: 0003

"""

from collections.abc import Sequence

from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table("login_transactions", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_login_transactions_browser_digest"), ["browser_digest"], unique=False
        )
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_refresh_tokens_family_expires_at"), ["family_expires_at"], unique=False
        )


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table("refresh_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_refresh_tokens_family_expires_at"))
    with op.batch_alter_table("login_transactions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_login_transactions_browser_digest"))
