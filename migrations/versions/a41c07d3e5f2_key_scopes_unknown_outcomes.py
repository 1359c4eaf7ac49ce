"""key scopes, bounded unknown outcomes

Revision ID: a41c07d3e5f2
Revises: 567bcf5f46c7
Create Date: 2026-11-30 10:00:00.000000

API keys get a scope (existing keys become `send`: they read only their own mail);
relays bound how often a message whose reply was lost after the final dot is sent
again; messages count such outcomes; a key's messages are listed through an index.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = 'a41c07d3e5f2'
down_revision = '567bcf5f46c7'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('scope', sa.String(length=16), server_default='send', nullable=False)
        )
    with op.batch_alter_table('relays', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('unknown_retries', sa.Integer(), server_default='3', nullable=False)
        )
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('unknown_outcomes', sa.Integer(), server_default='0', nullable=False)
        )
        batch_op.create_index('ix_messages_api_key', ['api_key_id', 'id'], unique=False)


def downgrade():
    with op.batch_alter_table('messages', schema=None) as batch_op:
        batch_op.drop_index('ix_messages_api_key')
        batch_op.drop_column('unknown_outcomes')
    with op.batch_alter_table('relays', schema=None) as batch_op:
        batch_op.drop_column('unknown_retries')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_column('scope')
