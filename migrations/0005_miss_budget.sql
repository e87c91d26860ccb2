-- 0005: each agency's budget of NOT_FOUND / NO_MATCH verification answers per minute
-- (registry.limits.MissBudget); NULL = the server's default.
ALTER TABLE agencies
    ADD COLUMN miss_budget integer,
    ADD CONSTRAINT agencies_miss_budget_check CHECK (miss_budget IS NULL OR miss_budget > 0);
