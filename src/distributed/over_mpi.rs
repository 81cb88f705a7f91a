//! [`Ranks`] over MPI (the `mpi` feature): the processes `mpirun` started.

use std::ops::AddAssign;

use mpi::datatype::{Partition, PartitionMut};
use mpi::environment::Universe;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::{CommunicatorCollectives, Equivalence};
use mpi::{Count, Threading};

use super::{add_in_rank_order, shard, Ranks};

/// This process's place in `MPI_COMM_WORLD`. MPI is initialised by
/// [`MpiRanks::init`] and finalised when the value is dropped; only the
/// thread that initialised it calls MPI (the step's worker threads never
/// do), which is MPI's "funneled" level.
pub struct MpiRanks {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
    /// Ranks on this machine (a shared-memory split of the world).
    local_size: usize,
    f32_scratch: Scratch<f32>,
    f64_scratch: Scratch<f64>,
    // Dropped last: finalises MPI.
    _universe: Universe,
}

/// Buffers of one sum, kept between calls so a step allocates nothing.
struct Scratch<T> {
    /// Every rank's copy of this rank's chunk, rank after rank.
    parts: Vec<T>,
    /// This rank's chunk, summed.
    sum: Vec<T>,
    /// Each rank's chunk of the slab: element counts and offsets.
    counts: Vec<Count>,
    offsets: Vec<Count>,
    /// This rank's chunk length, once per source rank, and where each lands
    /// in `parts`.
    part_counts: Vec<Count>,
    part_offsets: Vec<Count>,
}

impl<T> Default for Scratch<T> {
    fn default() -> Self {
        Scratch {
            parts: Vec::new(),
            sum: Vec::new(),
            counts: Vec::new(),
            offsets: Vec::new(),
            part_counts: Vec::new(),
            part_offsets: Vec::new(),
        }
    }
}

impl MpiRanks {
    /// Initialises MPI (once per process) at the funneled threading level.
    pub fn init() -> Result<MpiRanks, String> {
        let (universe, level) = mpi::initialize_with_threading(Threading::Funneled)
            .ok_or("MPI was already initialised in this process")?;
        if level < Threading::Funneled {
            return Err(format!(
                "this MPI library offers threading level {level:?}; fastnn's worker threads need Funneled"
            ));
        }
        let world = universe.world();
        let local_size = world.split_shared(world.rank()).size() as usize;
        Ok(MpiRanks {
            rank: world.rank() as usize,
            size: world.size() as usize,
            local_size,
            world,
            f32_scratch: Scratch::default(),
            f64_scratch: Scratch::default(),
            _universe: universe,
        })
    }

    /// How many ranks run on this machine (this one included).
    pub fn local_size(&self) -> usize {
        self.local_size
    }

    /// Ends every rank of the run with `code` (`MPI_Abort`): for an error
    /// on one rank, which the others would otherwise wait for forever.
    pub fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }
}

/// The rank-order sum of module `distributed`: an all-to-all hands rank `c`
/// every rank's chunk `c`, rank `c` adds them in rank order, and an
/// all-gather hands every rank every summed chunk.
fn sum_over<T>(world: &SimpleCommunicator, s: &mut Scratch<T>, values: &mut [T])
where
    T: Equivalence + Copy + Default + AddAssign,
{
    let (rank, size) = (world.rank() as usize, world.size() as usize);
    let count = |n: usize| Count::try_from(n).expect("a slab of at most 2³¹ − 1 elements");
    s.counts.clear();
    s.offsets.clear();
    for r in 0..size {
        let chunk = shard(values.len(), size, r);
        s.counts.push(count(chunk.len()));
        s.offsets.push(count(chunk.start));
    }
    let mine = shard(values.len(), size, rank).len();
    s.part_counts.clear();
    s.part_counts.resize(size, count(mine));
    s.part_offsets.clear();
    s.part_offsets.extend((0..size).map(|r| count(r * mine)));
    s.parts.resize(mine * size, T::default());
    s.sum.resize(mine, T::default());
    {
        let send = Partition::new(&*values, &s.counts[..], &s.offsets[..]);
        let mut recv = PartitionMut::new(&mut s.parts[..], &s.part_counts[..], &s.part_offsets[..]);
        world.all_to_all_varcount_into(&send, &mut recv);
    }
    if mine > 0 {
        add_in_rank_order(s.parts.chunks_exact(mine), &mut s.sum);
    }
    let mut recv = PartitionMut::new(values, &s.counts[..], &s.offsets[..]);
    world.all_gather_varcount_into(&s.sum[..], &mut recv);
}

impl Ranks for MpiRanks {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn sum_f32(&mut self, values: &mut [f32]) {
        if self.size > 1 {
            sum_over(&self.world, &mut self.f32_scratch, values);
        }
    }
    fn sum_f64(&mut self, values: &mut [f64]) {
        if self.size > 1 {
            sum_over(&self.world, &mut self.f64_scratch, values);
        }
    }
}
