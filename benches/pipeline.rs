//! Criterion benchmarks of the per-byte work: framing a 16 MiB WAL segment (compress + hash),
//! reading it back (decompress + verify), and content-defined chunking.
//! Run: `cargo bench --bench pipeline`; the side-by-side comparison with pgBackRest is
//! `benches/compare.sh`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use storage::{Codec, Compression, chunking, object};

/// A synthetic WAL segment: page headers and repetitive records with some entropy, which
/// compresses roughly like real pgbench WAL (about 5-7x with zstd).
fn synthetic_segment() -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(16 << 20);
    while out.len() < 16 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let record = format!(
            "INSERT INTO pgbench_history VALUES ({}, {}, {}, now())",
            x % 50,
            x % 5_000_000,
            x % 1000
        );
        out.extend_from_slice(record.as_bytes());
        out.extend_from_slice(&x.to_le_bytes()[..3]);
    }
    out.truncate(16 << 20);
    out
}

fn framing(c: &mut Criterion) {
    let segment = synthetic_segment();
    let mut group = c.benchmark_group("wal_segment");
    group.throughput(Throughput::Bytes(segment.len() as u64));
    group.sample_size(10);
    for (codec, level, workers) in [
        (Codec::Zstd, 3, 0),
        (Codec::Zstd, 3, 2),
        (Codec::Zstd, 1, 2),
        (Codec::Gzip, 6, 0),
    ] {
        let compression = Compression {
            codec,
            level,
            workers,
        };
        let id = format!("codec={codec:?}/level={level}/workers={workers}/size=16MiB");
        // Stream, hash and compress (zstd's own workers when `workers` > 0).
        group.bench_function(BenchmarkId::new("encode", &id), |b| {
            b.iter(|| {
                object::encode_reader(&segment[..], segment.len() as u64, compression)
                    .expect("encode")
            })
        });
        let (_, framed) = object::encode(&segment, compression).expect("encode");
        group.bench_function(BenchmarkId::new("decode", &id), |b| {
            b.iter(|| object::decode("bench", &framed).expect("decode"))
        });
    }
    // What `wal push` runs: the segment's halves read, hashed and compressed on two threads.
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("000000010000000000000001");
    std::fs::write(&path, &segment).expect("write the segment");
    let file = std::fs::File::open(&path).expect("open the segment");
    let compression = Compression {
        codec: Codec::Zstd,
        level: 3,
        workers: 2,
    };
    group.bench_function(
        BenchmarkId::new(
            "encode_file_in_parts",
            "codec=Zstd/level=3/workers=2/size=16MiB",
        ),
        |b| {
            b.iter(|| {
                object::encode_file_in_parts(&file, segment.len() as u64, compression)
                    .expect("encode")
            })
        },
    );
    group.finish();
}

fn chunking_bench(c: &mut Criterion) {
    let data = synthetic_segment();
    let mut group = c.benchmark_group("chunking");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.sample_size(10);
    group.bench_function("fastcdc/avg=256KiB/size=16MiB", |b| {
        b.iter(|| {
            chunking::content_defined_chunks(&data[..])
                .map(|c| c.expect("chunk").len())
                .sum::<usize>()
        })
    });
    group.finish();
}

criterion_group!(benches, framing, chunking_bench);
criterion_main!(benches);
