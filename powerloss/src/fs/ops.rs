//! The FUSE operations of [`PowerLossFs`]: each passes through to the directory underneath and
//! records in the journal what a cut would take back.

use super::*;

fn open_options(flags: i32) -> OpenOptions {
    let mut o = OpenOptions::new();
    o.read(true);
    if flags & libc::O_ACCMODE != libc::O_RDONLY {
        o.write(true);
    }
    o
}

/// Every file is opened for direct I/O: the kernel keeps no page of it, so after a cut nobody
/// reads bytes the cut took back.
const OPEN: FopenFlags = FopenFlags::FOPEN_DIRECT_IO;

impl Filesystem for PowerLossFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> io::Result<()> {
        // Fewer, larger requests for the nodes' segment and table writes; the kernel may
        // refuse, then its own limit stays.
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut st = self.shared.lock();
        match st.child(parent.0, name) {
            Ok((ino, meta)) => reply.entry(&TTL, &attr(ino, &meta), Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let st = self.shared.lock();
        let meta = match fh.and_then(|fh| st.handle(fh).ok()) {
            Some((_, file)) => file.metadata(),
            None => match st.path(ino.0) {
                Some(p) => std::fs::symlink_metadata(p),
                None => return reply.error(Errno::ENOENT),
            },
        };
        match meta {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut st = self.shared.lock();
        let Some(path) = st.path(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let result = (|| -> io::Result<std::fs::Metadata> {
            if let Some(size) = size {
                let file = match fh.and_then(|fh| st.handle(fh).ok()) {
                    Some((_, f)) => f,
                    None => Arc::new(OpenOptions::new().read(true).write(true).open(&path)?),
                };
                st.set_size(ino.0, &file, size)?;
            }
            if let Some(mode) = mode {
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & 0o7777))?;
            }
            if uid.is_some() || gid.is_some() {
                std::os::unix::fs::lchown(&path, uid, gid)?;
            }
            if atime.is_some() || mtime.is_some() {
                let resolve = |t: TimeOrNow| match t {
                    TimeOrNow::SpecificTime(t) => t,
                    TimeOrNow::Now => SystemTime::now(),
                };
                let mut times = std::fs::FileTimes::new();
                if let Some(a) = atime {
                    times = times.set_accessed(resolve(a));
                }
                if let Some(m) = mtime {
                    times = times.set_modified(resolve(m));
                }
                File::options().write(true).open(&path)?.set_times(times)?;
            }
            std::fs::symlink_metadata(&path)
        })();
        match result {
            Ok(m) => reply.attr(&TTL, &attr(ino.0, &m)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut st = self.shared.lock();
        let path = match st.dir_path(parent.0) {
            Ok(p) => p.join(name),
            Err(e) => return reply.error(e),
        };
        let made = std::fs::create_dir(&path).and_then(|()| {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode & !umask))
        });
        if let Err(e) = made {
            return reply.error(errno(e));
        }
        let ino = st.add(parent.0, name, FileType::Directory);
        st.journal.record(Change::Created {
            at: (parent.0, name.to_os_string()),
            ino,
        });
        match std::fs::symlink_metadata(&path) {
            Ok(m) => reply.entry(&TTL, &attr(ino, &m), Generation(0)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.remove(parent.0, name, false));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.remove(parent.0, name, true));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.rename_entry(parent.0, name, newparent.0, newname, flags),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let mut st = self.shared.lock();
        let Some(path) = st.path(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let file = match open_options(flags.0).open(&path) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(e)),
        };
        if flags.0 & libc::O_TRUNC != 0
            && let Err(e) = st.set_size(ino.0, &file, 0)
        {
            return reply.error(errno(e));
        }
        let fh = st.open_handle(ino.0, file);
        reply.opened(FileHandle(fh), OPEN);
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let mut st = self.shared.lock();
        let path = match st.dir_path(parent.0) {
            Ok(p) => p.join(name),
            Err(e) => return reply.error(e),
        };
        let existed = std::fs::symlink_metadata(&path).is_ok();
        if existed && flags & libc::O_EXCL != 0 {
            return reply.error(Errno::EEXIST);
        }
        let mut options = open_options(flags);
        options.write(true).create(true).mode(mode & !umask);
        let file = match options.open(&path) {
            Ok(f) => f,
            Err(e) => return reply.error(errno(e)),
        };
        let ino = if existed {
            match st.child(parent.0, name) {
                Ok((ino, _)) => ino,
                Err(e) => return reply.error(e),
            }
        } else {
            let ino = st.add(parent.0, name, FileType::RegularFile);
            st.journal.record(Change::Created {
                at: (parent.0, name.to_os_string()),
                ino,
            });
            ino
        };
        if existed
            && flags & libc::O_TRUNC != 0
            && let Err(e) = st.set_size(ino, &file, 0)
        {
            return reply.error(errno(e));
        }
        let meta = match file.metadata() {
            Ok(m) => m,
            Err(e) => return reply.error(errno(e)),
        };
        let fh = st.open_handle(ino, file);
        reply.created(&TTL, &attr(ino, &meta), Generation(0), FileHandle(fh), OPEN);
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        let file = match self.shared.lock().handle(fh) {
            Ok((_, f)) => f,
            Err(e) => return reply.error(e),
        };
        let mut buf = vec![0u8; size as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], offset + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return reply.error(errno(e)),
            }
        }
        reply.data(&buf[..filled]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut st = self.shared.lock();
        let (ino, file) = match st.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        let end = offset + data.len() as u64;
        let written = st
            .preserve(ino, &file, offset, end)
            .and_then(|()| file.write_all_at(data, offset));
        match written {
            Ok(()) => {
                st.stats.writes += 1;
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        // close() makes nothing durable.
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.shared.lock().handles.remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync_wait();
        let mut st = self.shared.lock();
        // The file's content and length as they are now are what a cut keeps.
        st.files.remove(&ino.0);
        st.stats.file_syncs += 1;
        reply.ok();
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if self.shared.lock().path(ino.0).is_none() {
            return reply.error(Errno::ENOENT);
        }
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut st = self.shared.lock();
        let path = match st.dir_path(ino.0) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        let listing = match std::fs::read_dir(&path) {
            Ok(it) => it.collect::<Result<Vec<_>, _>>(),
            Err(e) => Err(e),
        };
        let mut listing = match listing {
            Ok(l) => l,
            Err(e) => return reply.error(errno(e)),
        };
        listing.sort_by_key(|e| e.file_name());
        let parent = match st.nodes.get(&ino.0).map(|n| &n.place) {
            Some(Place::In(p, _)) => *p,
            _ => ROOT,
        };
        let mut entries: Vec<(Ino, FileType, OsString)> = vec![
            (ino.0, FileType::Directory, ".".into()),
            (parent, FileType::Directory, "..".into()),
        ];
        for e in listing {
            let name = e.file_name();
            let kind = match e.file_type() {
                Ok(t) => kind_of(t),
                Err(_) => continue,
            };
            let child = match st.names.get(&(ino.0, name.clone())) {
                Some(&c) => c,
                None => st.add(ino.0, &name, kind),
            };
            entries.push((child, kind, name));
        }
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), (i + 1) as u64, kind, &name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.sync_wait();
        let mut st = self.shared.lock();
        st.stats.dir_syncs += 1;
        reply_empty(reply, st.dir_synced(ino.0).map_err(errno));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let tree = self.shared.lock().tree.clone();
        match nix::sys::statvfs::statvfs(&tree) {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        if self.shared.lock().path(ino.0).is_some() {
            reply.ok();
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        use nix::fcntl::FallocateFlags;
        let Some(flags) = FallocateFlags::from_bits(mode) else {
            return reply.error(Errno::EOPNOTSUPP);
        };
        let supported = FallocateFlags::FALLOC_FL_KEEP_SIZE
            | FallocateFlags::FALLOC_FL_PUNCH_HOLE
            | FallocateFlags::FALLOC_FL_ZERO_RANGE;
        if !supported.contains(flags) {
            return reply.error(Errno::EOPNOTSUPP);
        }
        let mut st = self.shared.lock();
        let (ino, file) = match st.handle(fh) {
            Ok(h) => h,
            Err(e) => return reply.error(e),
        };
        // Zeroing or punching changes bytes; plain allocation changes at most the length.
        let changes = flags.intersects(
            FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_ZERO_RANGE,
        );
        let (from, to) = if changes {
            (offset, offset + length)
        } else {
            (0, 0)
        };
        if let Err(e) = st.preserve(ino, &file, from, to) {
            return reply.error(errno(e));
        }
        match nix::fcntl::fallocate(&*file, flags, offset as i64, length as i64) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(Errno::from_i32(e as i32)),
        }
    }
}

fn reply_empty(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl PowerLossFs {
    fn remove(&self, parent: Ino, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let mut st = self.shared.lock();
        let (ino, meta) = st.child(parent, name)?;
        if meta.is_dir() != dir {
            return Err(if dir { Errno::ENOTDIR } else { Errno::EISDIR });
        }
        let path = st.dir_path(parent)?.join(name);
        if dir && std::fs::read_dir(&path).map_err(errno)?.next().is_some() {
            return Err(Errno::ENOTEMPTY);
        }
        let grave = st.grave();
        std::fs::rename(&path, &grave).map_err(errno)?;
        st.names.remove(&(parent, name.to_os_string()));
        if let Some(node) = st.nodes.get_mut(&ino) {
            node.place = Place::Grave(grave.clone());
        }
        st.journal.record(Change::Removed {
            at: (parent, name.to_os_string()),
            ino,
            grave,
        });
        Ok(())
    }

    fn rename_entry(
        &self,
        parent: Ino,
        name: &OsStr,
        newparent: Ino,
        newname: &OsStr,
        flags: RenameFlags,
    ) -> Result<(), Errno> {
        if flags.bits() & !libc::RENAME_NOREPLACE != 0 {
            return Err(Errno::EINVAL);
        }
        let mut st = self.shared.lock();
        let (ino, meta) = st.child(parent, name)?;
        let from = st.dir_path(parent)?.join(name);
        let to = st.dir_path(newparent)?.join(newname);
        if from == to {
            return Ok(());
        }
        let replaced = match st.child(newparent, newname) {
            Ok((old, old_meta)) => {
                if flags.bits() & libc::RENAME_NOREPLACE != 0 {
                    return Err(Errno::EEXIST);
                }
                if old_meta.is_dir() != meta.is_dir() {
                    return Err(if meta.is_dir() {
                        Errno::ENOTDIR
                    } else {
                        Errno::EISDIR
                    });
                }
                if old_meta.is_dir() && std::fs::read_dir(&to).map_err(errno)?.next().is_some() {
                    return Err(Errno::ENOTEMPTY);
                }
                let grave = st.grave();
                std::fs::rename(&to, &grave).map_err(errno)?;
                if let Some(node) = st.nodes.get_mut(&old) {
                    node.place = Place::Grave(grave.clone());
                }
                st.names.remove(&(newparent, newname.to_os_string()));
                Some((old, grave))
            }
            Err(e) if e == Errno::ENOENT => None,
            Err(e) => return Err(e),
        };
        if let Err(e) = std::fs::rename(&from, &to) {
            // Put the replaced entry back before failing.
            if let Some((old, grave)) = &replaced {
                let _ = std::fs::rename(grave, &to);
                st.place(*old, newparent, newname.to_os_string());
            }
            return Err(errno(e));
        }
        st.names.remove(&(parent, name.to_os_string()));
        st.place(ino, newparent, newname.to_os_string());
        st.journal.record(Change::Renamed {
            from: (parent, name.to_os_string()),
            to: (newparent, newname.to_os_string()),
            ino,
            replaced,
        });
        Ok(())
    }
}
