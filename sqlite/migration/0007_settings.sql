-- Facts about the database itself, such as which kind of Marketplace
-- endpoint (AWS or an emulator) it meters to.
CREATE TABLE settings (
	key   TEXT PRIMARY KEY,
	value TEXT NOT NULL
);
