DROP TABLE IF EXISTS batchyard.pack_members;
DROP TABLE IF EXISTS batchyard.packs;
