-- phenix demo, part 2: queries in the contrastive space.
.load target/release/libphenix
.mode box
.print
.print 1) KNN: the 8 (molecule, dose) candidates nearest to imatinib at 10 uM,
.print    pre-filtered to 10 uM (metadata constraints apply before ranking, so 8 rows come back)
SELECT m.rowid, m.name, m.concentration AS um, round(m.distance, 4) AS distance
FROM molecules m
WHERE m.embedding MATCH (SELECT embedding FROM molecules WHERE name = 'IMATINIB' AND concentration = 10.0)
  AND k = 8 AND m.concentration = 10.0;
.print
.print 2) The same molecule at three doses embeds differently (explicit concentration encoding):
SELECT a.concentration AS um_a, b.concentration AS um_b,
       round(phenix_distance_cosine(phenix_to_json(a.embedding, 'float16'), phenix_to_json(b.embedding, 'float16')), 4) AS cosine_distance
FROM molecules a JOIN molecules b ON a.name = b.name AND a.concentration < b.concentration
WHERE a.name = 'IMATINIB';
.print
.print 3) phenix_retrieve: the top 1 % (79 of 7,884) candidates for a query vector, shown up to rank 10.
.print    The query here is the molecule embedding of dasatinib at 1 uM (molecule -> molecule).
SELECT r.rank, m.name, m.concentration AS um, round(r.distance, 4) AS distance
FROM phenix_retrieve('molecules',
       (SELECT embedding FROM molecules WHERE name = 'DASATINIB' AND concentration = 1.0), 79) AS r
JOIN molecules m ON m.rowid = r.rowid
WHERE r.rank <= 10;
