-- phenix demo, part 2: queries in the contrastive space.
.load target/release/libphenix
.mode box
.print
.print 1) Phenotype -> molecule: each profile below is the replicate mean of simulated wells treated with an
.print    approved drug from the model's held-out scaffolds (8 active wells drawn at random; see
.print    docs/science.md). phenix_embed_phenomics embeds it and phenix_retrieve ranks all 13,140 (drug, dose)
.print    candidates; top 1 % = 132. Where did the true (drug, dose), and the true drug at any dose, land?
.print    For scale: the training report's top-1 % recall on the 1,992 active held-out-scaffold wells, ranked
.print    among the 8,740 held-out candidates, is 27.8 % (random: 1 %); here the candidates are all approved
.print    drugs, most of which the model trained on.
WITH hits AS (
  SELECT w.well, w.name AS true_drug, w.um AS true_um, r.rank, m.name, m.concentration
  FROM wells w, phenix_retrieve('molecules', phenix_embed_phenomics('default', w.profile), 132) AS r
  JOIN molecules m ON m.rowid = r.rowid
)
SELECT well, true_drug, true_um,
       coalesce((SELECT min(rank) FROM hits h WHERE h.well = w.well AND h.name = w.true_drug AND h.concentration = w.true_um), '>132') AS rank_of_true_pair,
       coalesce((SELECT min(rank) FROM hits h WHERE h.well = w.well AND h.name = w.true_drug), '>132') AS rank_of_true_drug
FROM (SELECT DISTINCT well, true_drug, true_um FROM hits) AS w ORDER BY well;
.print
.print 2) The five nearest candidates for well W7 (KNN through MATCH, pre-filtered to the 1 uM candidates):
SELECT m.rowid, m.name, m.concentration AS um, round(m.distance, 4) AS distance
FROM molecules m
WHERE m.embedding MATCH (SELECT phenix_embed_phenomics('default', profile) FROM wells WHERE well = 'W7')
  AND k = 5 AND m.concentration = 1.0;
.print
.print 3) Molecule -> molecule: the candidates nearest to imatinib at 10 uM, among 10 uM candidates:
SELECT m.name, round(m.distance, 4) AS distance
FROM molecules m
WHERE m.embedding MATCH (SELECT embedding FROM molecules WHERE name = 'IMATINIB' AND concentration = 10.0)
  AND k = 5 AND m.concentration = 10.0;
.print
.print 4) One molecule at five doses embeds differently (explicit concentration encoding): cosine
.print    distance of imatinib's embedding at each dose to its 10 uM embedding
SELECT a.concentration AS um,
       round(phenix_distance_cosine(a.embedding, b.embedding, 'float16'), 4) AS distance_to_10uM
FROM molecules a JOIN molecules b ON b.name = a.name AND b.concentration = 10.0
WHERE a.name = 'IMATINIB' ORDER BY a.concentration;
