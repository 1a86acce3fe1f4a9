-- The audit trail of merchant status changes: who changed which merchant from what to what, and when
-- (issue 13). Written in the transaction of the change itself, so no change commits without its
-- record. Expand-only: a new table the previous release never touches.
CREATE TABLE merchant_status_changes (
    id uuid PRIMARY KEY,
    merchant_id uuid NOT NULL REFERENCES merchants (id),
    from_status text NOT NULL,
    to_status text NOT NULL,
    from_version integer NOT NULL,
    to_version integer NOT NULL,
    -- `api-key:<client>`, `jwt:<client>` or `anonymous:anonymous` (authentication off).
    actor text NOT NULL,
    request_id text,
    changed_at timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX idx_merchant_status_changes_merchant
    ON merchant_status_changes (merchant_id, changed_at DESC, id DESC);
