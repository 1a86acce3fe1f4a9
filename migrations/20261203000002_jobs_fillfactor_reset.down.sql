-- Restores the first jobs migration's page reservation.
ALTER TABLE jobs SET (fillfactor = 80);
