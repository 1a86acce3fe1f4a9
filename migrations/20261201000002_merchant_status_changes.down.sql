DROP TABLE IF EXISTS merchant_status_changes;
