//! The [`FileSystem`] implementation of [`Guard`]: every method delegated to the wrapped file
//! system, with the share's checks before and the inode and handle accounting after.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{
    stat64, statvfs64, CreateIn, FsOptions, OpenOptions, SetattrValid,
};
use fuse_backend_rs::abi::virtio_fs::RemovemappingOne;
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    ZeroCopyReader, ZeroCopyWriter, ROOT_ID,
};
use fuse_backend_rs::transport::FsCacheReqHandler;

use super::{Guard, Live, SETUPMAPPING_WRITE, XATTR_SIZE_MAX};

impl<FS: FileSystem> FileSystem for Guard<FS> {
    type Inode = FS::Inode;
    type Handle = FS::Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        self.inner.init(capable)
    }

    fn destroy(&self) {
        // The inner file system drops every inode and handle (and reopens the root).
        self.inner.destroy();
        *self.lock() = Live::default();
    }

    fn lookup(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<Entry> {
        let entry = self.inner.lookup(ctx, parent, name)?;
        self.hold(ctx, "a lookup past the inode bound", entry)
    }

    fn forget(&self, ctx: &Context, inode: Self::Inode, count: u64) {
        let ino: u64 = inode.into();
        self.inner.forget(ctx, ino.into(), count);
        Self::drop_lookups(&mut self.lock(), ino, count);
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Self::Inode, u64)>) {
        let requests: Vec<(u64, u64)> = requests.into_iter().map(|(i, n)| (i.into(), n)).collect();
        self.inner
            .batch_forget(ctx, requests.iter().map(|&(i, n)| (i.into(), n)).collect());
        let mut live = self.lock();
        for (i, n) in requests {
            Self::drop_lookups(&mut live, i, n);
        }
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Option<Self::Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        attr: stat64,
        handle: Option<Self::Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        self.writable("setattr")?;
        self.inner.setattr(ctx, inode, attr, handle, valid)
    }

    fn readlink(&self, ctx: &Context, inode: Self::Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Self::Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.writable("symlink")?;
        self.room_for_inode("a symlink past the inode bound")?;
        let entry = self.inner.symlink(ctx, linkname, parent, name)?;
        self.hold(ctx, "a symlink past the inode bound", entry)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable("mknod")?;
        let kind = mode & libc::S_IFMT;
        let whiteout = kind == libc::S_IFCHR && rdev == 0;
        if (kind == libc::S_IFBLK || kind == libc::S_IFCHR)
            && !whiteout
            && !self.policy.allow_devices
        {
            return self.deny("a device node", libc::EPERM);
        }
        self.room_for_inode("a mknod past the inode bound")?;
        let entry = self.inner.mknod(ctx, inode, name, mode, rdev, umask)?;
        self.hold(ctx, "a mknod past the inode bound", entry)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.writable("mkdir")?;
        self.room_for_inode("a mkdir past the inode bound")?;
        let entry = self.inner.mkdir(ctx, parent, name, mode, umask)?;
        self.hold(ctx, "a mkdir past the inode bound", entry)
    }

    fn unlink(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable("unlink")?;
        self.inner.unlink(ctx, parent, name)
    }

    fn rmdir(&self, ctx: &Context, parent: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable("rmdir")?;
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Self::Inode,
        oldname: &CStr,
        newdir: Self::Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        self.writable("rename")?;
        self.inner
            .rename(ctx, olddir, oldname, newdir, newname, flags)
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        newparent: Self::Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.writable("link")?;
        // A new name for an inode the guest already holds: no new descriptor.
        let entry = self.inner.link(ctx, inode, newparent, newname)?;
        self.hold(ctx, "a link past the inode bound", entry)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions, Option<u32>)> {
        let f = flags as i32;
        if f & libc::O_ACCMODE != libc::O_RDONLY || f & libc::O_TRUNC != 0 {
            self.writable("an open for writing")?;
        }
        let ino: u64 = inode.into();
        let (handle, opts, passthrough) = self.inner.open(ctx, ino.into(), flags, fuse_flags)?;
        let handle = self.hold_handle(ctx, "an open past the handle bound", ino, handle, false)?;
        Ok((handle, opts, passthrough))
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Self::Inode,
        name: &CStr,
        args: CreateIn,
    ) -> io::Result<(Entry, Option<Self::Handle>, OpenOptions, Option<u32>)> {
        self.writable("create")?;
        if self.lock().handles.len() >= self.limits.handles {
            return self.deny("a create past the handle bound", libc::EMFILE);
        }
        let (entry, handle, opts, passthrough) = self.inner.create(ctx, parent, name, args)?;
        let ino = entry.inode;
        let handle = self.hold_handle(ctx, "a create past the handle bound", ino, handle, false);
        let handle = match handle {
            Ok(h) => h,
            Err(e) => {
                // The handle went back; so does the entry's lookup.
                self.inner.forget(ctx, ino.into(), 1);
                return Err(e);
            }
        };
        match self.hold(ctx, "a create past the inode bound", entry) {
            Ok(entry) => Ok((entry, handle, opts, passthrough)),
            Err(e) => {
                if let Some(h) = handle {
                    let h: u64 = h.into();
                    let res = self
                        .inner
                        .release(ctx, ino.into(), 0, h.into(), false, false, None);
                    let _ = self.released(h, res);
                }
                Err(e)
            }
        }
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        self.writable("write")?;
        self.inner.write(
            ctx,
            inode,
            handle,
            r,
            size,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        )
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        self.writable("fallocate")?;
        self.inner
            .fallocate(ctx, inode, handle, mode, offset, length)
    }

    fn release(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        let h: u64 = handle.into();
        let res = self.inner.release(
            ctx,
            inode,
            flags,
            h.into(),
            flush,
            flock_release,
            lock_owner,
        );
        self.released(h, res)
    }

    fn statfs(&self, ctx: &Context, inode: Self::Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.writable("setxattr")?;
        self.xattr_name("setxattr outside user.", name)?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner
            .getxattr(ctx, inode, name, size.min(XATTR_SIZE_MAX))
    }

    fn listxattr(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        size: u32,
    ) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, size.min(XATTR_SIZE_MAX))
    }

    fn removexattr(&self, ctx: &Context, inode: Self::Inode, name: &CStr) -> io::Result<()> {
        self.writable("removexattr")?;
        self.xattr_name("removexattr outside user.", name)?;
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
    ) -> io::Result<(Option<Self::Handle>, OpenOptions)> {
        let ino: u64 = inode.into();
        let (handle, opts) = self.inner.opendir(ctx, ino.into(), flags)?;
        let handle =
            self.hold_handle(ctx, "an opendir past the handle bound", ino, handle, true)?;
        Ok((handle, opts))
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    /// Every entry the server puts in the reply is one lookup the guest holds. The passthrough
    /// takes a lookup count for each entry before offering it, and gives it back itself when
    /// the server answers 0 (no room left: the listing stops there). An entry past the inode
    /// bound is answered 0 here too, so the passthrough forgets it and the guest gets a short
    /// listing; when not even one entry fits, the call fails with ENFILE. The passthrough does
    /// not give back the lookup of an entry whose `add_entry` failed (it then returns what it
    /// had, or the error when it had nothing): that one is forgotten here. When the whole call
    /// fails the guest sees none of the entries, so every lookup taken for them goes back. The
    /// one case this cannot see is the server failing to write a reply it had filled, after
    /// this returns; it checks the reply buffer's size first, so only a guest rewriting its own
    /// descriptors gets there, and it then leaks lookups only of inodes within the bound.
    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let mut delivered: Vec<u64> = Vec::new();
        let mut failed: Option<u64> = None;
        let mut over = false;
        let mut res = self
            .inner
            .readdirplus(ctx, inode, handle, size, offset, &mut |d, e| {
                let ino = e.inode;
                let counted = ino != 0 && ino != ROOT_ID;
                if counted {
                    let live = self.lock();
                    if !live.inodes.contains_key(&ino) && live.inodes.len() >= self.limits.inodes {
                        over = true;
                        return Ok(0);
                    }
                }
                match add_entry(d, e) {
                    Ok(0) => Ok(0),
                    Ok(n) => {
                        if counted {
                            *self.lock().inodes.entry(ino).or_insert(0) += 1;
                            delivered.push(ino);
                        }
                        Ok(n)
                    }
                    Err(err) => {
                        failed = Some(ino).filter(|_| counted);
                        Err(err)
                    }
                }
            });
        if let Some(i) = failed {
            self.inner.forget(ctx, i.into(), 1);
        }
        if over {
            let e = self.deny::<()>("a readdirplus entry past the inode bound", libc::ENFILE);
            if delivered.is_empty() && res.is_ok() {
                res = e;
            }
        }
        if res.is_err() && !delivered.is_empty() {
            let back = delivered.iter().map(|&i| (i.into(), 1)).collect();
            self.inner.batch_forget(ctx, back);
            let mut live = self.lock();
            for i in delivered {
                Self::drop_lookups(&mut live, i, 1);
            }
        }
        res
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        datasync: bool,
        handle: Self::Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        flags: u32,
        handle: Self::Handle,
    ) -> io::Result<()> {
        let h: u64 = handle.into();
        let res = self.inner.releasedir(ctx, inode, flags, h.into());
        self.released(h, res)
    }

    fn setupmapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        if flags & SETUPMAPPING_WRITE != 0 {
            self.writable("a writable mapping")?;
        }
        self.inner
            .setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner.removemapping(ctx, inode, requests, vu_req)
    }

    fn access(&self, ctx: &Context, inode: Self::Inode, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    fn ioctl(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        // The passthrough answers ENOSYS; a file system that implements ioctls would need its
        // own read-only rules here.
        self.inner
            .ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        block: u64,
        blocksize: u32,
    ) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: Self::Inode,
        handle: Self::Handle,
        khandle: Self::Handle,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}
