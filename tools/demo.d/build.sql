-- phenix demo, part 1: embed every approved drug at the screen's five doses with the shipped default
-- model, and load four simulated phenomic profiles of wells the model never saw (data/demo/).
.bail on
.load target/release/libphenix
.import --csv data/molecules/approved_drugs.csv drugs
.import --csv data/demo/profiles.csv wells
CREATE TABLE doses(um REAL);
INSERT INTO doses VALUES (0.1), (0.3), (1.0), (3.0), (10.0);
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
WITH e AS MATERIALIZED (SELECT id, embedding FROM phenix_embed_molecules('default', 'SELECT cid, smiles, um FROM candidates'))
INSERT INTO molecules(rowid, embedding, name, concentration, chembl_id, smiles)
  SELECT e.id, e.embedding, c.name, c.um, c.chembl_id, c.smiles
  FROM e JOIN candidates c ON c.cid = e.id;
SELECT printf('%d (molecule, dose) candidates embedded with model %s', count(*),
              (SELECT name || ' (' || featurizer || ')' FROM phenix_models WHERE name = 'default'))
  FROM molecules;
