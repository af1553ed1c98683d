-- Run once by the postgres image when docker-compose.yml first initialises its data volume
-- (/docker-entrypoint-initdb.d). Gatehouse keeps the `gatehouse` database; Langfuse gets its own, owned by the
-- same role. An existing pg-data volume is not re-initialised: create the database by hand there
-- (docker-compose exec postgres createdb -U gatehouse langfuse).
CREATE DATABASE langfuse;
