"""maintenance and webhooks

Revision ID: b7c1e9d4a2f0
Revises: a41c07d3e5f2
Create Date: 2026-11-30 12:00:00.000000

Relays hold their webhook signing secret (sealed) and their maintenance state;
messages remember the relay they are held or deferred for; planned maintenance
windows; webhook events as received.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'b7c1e9d4a2f0'
down_revision = 'a41c07d3e5f2'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('relays', schema=None) as batch_op:
        batch_op.add_column(sa.Column('webhook_secret_encrypted', sa.LargeBinary(), nullable=True))
        batch_op.add_column(sa.Column('maintenance_since', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('maintenance_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('maintenance_by', sa.String(length=128), nullable=True))
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(sa.Column('waiting_for_relay_id', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            'fk_messages_waiting_for_relay_id_relays',
            'relays',
            ['waiting_for_relay_id'],
            ['id'],
            ondelete='SET NULL',
        )
        batch_op.create_index(
            'ix_messages_waiting_for',
            ['waiting_for_relay_id', 'priority', 'created_at'],
            unique=False,
            sqlite_where=sa.text('waiting_for_relay_id IS NOT NULL'),
            postgresql_where=sa.text('waiting_for_relay_id IS NOT NULL'),
        )
    op.create_table(
        'maintenance_windows',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('relay_id', sa.Integer(), nullable=False),
        sa.Column('starts_at', sa.DateTime(), nullable=False),
        sa.Column('ends_at', sa.DateTime(), nullable=False),
        sa.Column('note', sa.Text(), nullable=False),
        sa.Column('created_by', sa.String(length=128), nullable=False),
        sa.Column('created_at', sa.DateTime(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(['relay_id'], ['relays.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index(
        'ix_maintenance_windows_state', 'maintenance_windows', ['state', 'starts_at'], unique=False
    )
    op.create_table(
        'webhook_events',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('dedup_key', sa.String(length=128), nullable=False),
        sa.Column('provider', sa.String(length=32), nullable=False),
        sa.Column('relay_id', sa.Integer(), nullable=True),
        sa.Column('type', sa.String(length=64), nullable=False),
        sa.Column('received_at', sa.DateTime(), nullable=False),
        sa.Column('body', sa.Text(), nullable=False),
        sa.Column('processed_at', sa.DateTime(), nullable=True),
        sa.Column('result', sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(['relay_id'], ['relays.id'], ondelete='SET NULL'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('dedup_key'),
    )
    op.create_index(
        'ix_webhook_events_pending', 'webhook_events', ['processed_at', 'id'], unique=False
    )


def downgrade():
    op.drop_index('ix_webhook_events_pending', table_name='webhook_events')
    op.drop_table('webhook_events')
    op.drop_index('ix_maintenance_windows_state', table_name='maintenance_windows')
    op.drop_table('maintenance_windows')
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_waiting_for')
        batch_op.drop_constraint('fk_messages_waiting_for_relay_id_relays', type_='foreignkey')
        batch_op.drop_column('waiting_for_relay_id')
    with op.batch_alter_table('relays', schema=None) as batch_op:
        batch_op.drop_column('maintenance_by')
        batch_op.drop_column('maintenance_reason')
        batch_op.drop_column('maintenance_since')
        batch_op.drop_column('webhook_secret_encrypted')
