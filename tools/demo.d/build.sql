-- phenix demo, part 1: embed every approved drug at three doses with the shipped default model.
.bail on
.load target/release/libphenix
.import --csv data/molecules/approved_drugs.csv drugs
CREATE TABLE doses(um REAL);
INSERT INTO doses VALUES (0.1), (1.0), (10.0);
CREATE TABLE candidates AS
  SELECT row_number() OVER (ORDER BY d.id, doses.um) AS cid, d.id AS chembl_id, d.name, d.smiles, doses.um
  FROM drugs d CROSS JOIN doses;
CREATE VIRTUAL TABLE molecules USING phenix(
  embedding float16[256] distance=cosine,
  name TEXT,
  concentration REAL,
  +chembl_id TEXT,
  +smiles TEXT
);
-- One batched pass through the molecule encoder (featurizer + ONNX Runtime inside SQLite).
INSERT INTO molecules(rowid, embedding, name, concentration, chembl_id, smiles)
  SELECT e.id, e.embedding, c.name, c.um, c.chembl_id, c.smiles
  FROM phenix_embed_molecules('default', 'SELECT cid, smiles, um FROM candidates') AS e
  JOIN candidates c ON c.cid = e.id;
SELECT printf('%d (molecule, dose) candidates embedded with model %s', count(*),
              (SELECT name || ' (' || featurizer || ')' FROM phenix_models WHERE name = 'default'))
  FROM molecules;
